"""The leakage probe: per-token slices found by shape, the tokens read back from a real client update equal the
tokens it trained on (embedding LoRA in the clear), nothing is read without per-token slices, and every run whose
adapter has them says so."""

from __future__ import annotations

import json

import pytest
import torch

from fedpeft.algorithms.fedavg import client as fedavg_client
from fedpeft.privacy.audit import (
    module_name,
    per_token_axes,
    precision_recall,
    recovered_tokens,
    top_tokens,
    warning_text,
)
from fedpeft.runtime import run_federated


def test_per_token_axes_and_recovery_on_tiny_tensors():
    vocab = 10
    update = {
        "m.embed_tokens.lora_embedding_A": torch.zeros(2, vocab),  # [r, V]
        "m.lm_head.lora_B.weight": torch.zeros(vocab, 2),  # [V, r]
        "m.q_proj.lora_A.weight": torch.ones(2, 4),
    }
    update["m.embed_tokens.lora_embedding_A"][:, [1, 4]] = 0.5
    update["m.lm_head.lora_B.weight"][7] = -1e-3
    axes = per_token_axes(update, vocab)
    assert axes == {"m.embed_tokens.lora_embedding_A": 1, "m.lm_head.lora_B.weight": 0}
    assert recovered_tokens(update, axes, vocab) == {1, 4, 7}
    assert recovered_tokens(update, axes, vocab, tol=1e-2) == {1, 4}
    assert top_tokens(update, axes, vocab, 2) == {1, 4}
    assert precision_recall({1, 4, 7}, {1, 4, 9, 8}) == (2 / 3, 0.5)
    assert precision_recall(set(), {1}) == (0.0, 0.0)
    assert module_name("base_model.model.model.embed_tokens.lora_embedding_A") == "embed_tokens"
    assert module_name("base_model.model.lm_head.lora_B.weight") == "lm_head"
    assert warning_text({"q": torch.zeros(3, 4)}, vocab, False) is None
    assert "in the clear" in warning_text(update, vocab, False)
    assert "union" in warning_text(update, vocab, True)


EMB = {"target_modules": ["embed_tokens", "q_proj", "v_proj"]}
FED = {"num_clients": 3, "rounds": 1}


def _uploads_and_tokens(job, monkeypatch, **tables):
    """Run one round; return ({client: upload}, {client: token ids its training forward passes saw}, run)."""
    original = fedavg_client.app._handlers["train"]
    uploads, tokens = {}, {}

    def spy(ctx, msg):
        seen: set[int] = set()
        emb = ctx.model.get_input_embeddings()
        hook = emb.register_forward_pre_hook(lambda m, args: seen.update(args[0].flatten().tolist()))
        try:
            reply = original(ctx, msg)
        finally:
            hook.remove()
        uploads[ctx.client_id], tokens[ctx.client_id] = dict(reply.arrays), seen
        return reply

    monkeypatch.setitem(fedavg_client.app._handlers, "train", spy)
    run = run_federated(job(federation=FED, **tables), quiet=True).path
    return uploads, tokens, run


def _events(run, kind):
    return [e for e in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if e["event"] == kind]


def test_an_embedding_lora_update_names_exactly_the_tokens_the_client_trained_on(job, monkeypatch):
    uploads, tokens, run = _uploads_and_tokens(job, monkeypatch, adapter=EMB)
    vocab = 8192
    for cid, update in uploads.items():
        axes = per_token_axes(update, vocab)
        assert [module_name(k) for k in axes] == ["embed_tokens"]
        got = recovered_tokens(update, axes, vocab)
        true = tokens[cid] - {0}  # padding carries no gradient (masked out of attention and loss)
        precision, recall = precision_recall(got, true)
        # everything read back was in the client's batches; a token missed is one that only followed the predicted
        # position (the label word itself under label_words loss): it never reached the loss, so no gradient
        assert precision == 1.0 and recall > 0.97, (len(got), len(true))
        assert len(got) > 50
    assert "in the clear" in _events(run, "privacy")[0]["message"]


def test_without_per_token_slices_nothing_is_read_and_nothing_is_said(job, monkeypatch):
    uploads, _, run = _uploads_and_tokens(job, monkeypatch)  # LoRA on q_proj, v_proj only
    assert all(per_token_axes(u, 8192) == {} for u in uploads.values())
    assert _events(run, "privacy") == []


@pytest.mark.slow
def test_under_secure_aggregation_the_run_says_what_remains(job):
    pytest.importorskip("flwr")
    run = run_federated(job(federation=FED, adapter=EMB, privacy={"secure_aggregation": True}), quiet=True).path
    assert "union" in _events(run, "privacy")[0]["message"]
