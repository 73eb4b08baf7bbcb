"""FedPT's proxy-tuning pieces: the logit arithmetic on tiny tensors, the black-box logit sources, the weighted
logit sum as a causal LM (scoring, cached and uncached greedy decoding) on the bundled tiny models."""

from __future__ import annotations

import pytest
import torch

from fedpeft.adapters import attach_adapter
from fedpeft.algorithms.fedpt import LogitSource, LogitSum, proxy_logits, proxy_model
from fedpeft.config import AdapterConfig
from fedpeft.errors import ConfigError
from fedpeft.models import load_model, load_tokenizer
from fedpeft.training.evaluate import generate
from fedpeft.training.losses import label_scores


def test_proxy_logits_is_large_plus_alpha_times_expert_minus_antiexpert():
    large = torch.tensor([[1.0, 2.0, 3.0]])
    expert = torch.tensor([[0.5, 0.0, -1.0]])
    anti = torch.tensor([[0.0, 1.0, 1.0]])
    out = proxy_logits(large, expert, anti, alpha=2.0)
    assert torch.equal(out, torch.tensor([[2.0, 0.0, -1.0]]))  # by hand: [1+2*.5, 2+2*(-1), 3+2*(-2)]
    assert torch.equal(proxy_logits(large, expert, anti, alpha=0.0), large)
    # the same distribution as log-probability arithmetic: per-model normalisers are constants per position
    lp = lambda z: torch.log_softmax(z, -1)  # noqa: E731
    assert torch.allclose(
        torch.softmax(out, -1), torch.softmax(lp(large) + 2.0 * (lp(expert) - lp(anti)), -1), atol=1e-6
    )
    # bf16 inputs are combined in float32
    assert proxy_logits(large.bfloat16(), expert.bfloat16(), anti.bfloat16()).dtype == torch.float32
    with pytest.raises(ValueError, match="shapes differ"):
        proxy_logits(large, expert[:, :2], anti)


def _callable_source(weight: torch.Tensor, name: str) -> LogitSource:
    """A black box computing logits as a fixed function of the tokens (a toy 'remote' model)."""

    def fn(ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        emb = weight[ids]  # [B, T, V]
        return emb.cumsum(1) * mask[..., None]  # depends on the whole prefix, like a causal LM

    return LogitSource.of_callable(fn, weight.shape[1], name)


def test_logit_sum_forward_is_the_weighted_sum_and_keeps_hugging_face_logits_to_keep():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(11, 11, generator=gen), torch.randn(11, 11, generator=gen)
    src_a, src_b = _callable_source(a, "a"), _callable_source(b, "b")
    ids = torch.randint(0, 11, (2, 5), generator=gen)
    mask = torch.ones_like(ids)
    za, zb = src_a.logits(ids, mask)[0], src_b.logits(ids, mask)[0]
    both = LogitSum([(1.0, src_a), (-0.5, src_b)])
    assert torch.allclose(both(ids, mask).logits, za - 0.5 * zb)
    pos = torch.tensor([[1], [3]])  # one position per row, as label-word scoring asks
    kept = both(ids, mask, logits_to_keep=pos).logits
    assert kept.shape == (2, 1, 11)
    assert torch.allclose(kept[0, 0], (za - 0.5 * zb)[0, 1]) and torch.allclose(kept[1, 0], (za - 0.5 * zb)[1, 3])
    assert torch.allclose(both(ids, mask, logits_to_keep=1).logits[:, 0], (za - 0.5 * zb)[:, -1])


def test_sources_over_different_vocabularies_are_refused_naming_both():
    a = _callable_source(torch.zeros(4, 11), "big-model")
    b = _callable_source(torch.zeros(4, 7), "small-model")
    with pytest.raises(ConfigError, match="'big-model' has 11 logits per token and 'small-model' 7"):
        LogitSum([(1.0, a), (1.0, b)])


@pytest.fixture(scope="module")
def tiny_pair():
    tok = load_tokenizer("tiny-small")
    large = load_model("tiny-large")
    small = load_model("tiny-small")
    expert = attach_adapter(load_model("tiny-small"), AdapterConfig(method="lora", r=4, alpha=8.0))
    with torch.no_grad():  # a non-zero adapter, so the expert differs from the anti-expert
        gen = torch.Generator().manual_seed(1)
        for name, p in expert.named_parameters():
            if "lora_B" in name:
                p.copy_(0.05 * torch.randn(p.shape, generator=gen))
    return tok, large, small, expert


def _prompts(tok):
    texts = ["the movie was", "a warm , funny and touching story about a family", "boring"]
    side = tok.padding_side
    tok.padding_side = "left"
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    tok.padding_side = side
    return enc["input_ids"], enc["attention_mask"]


def test_a_model_source_equals_the_model_and_its_cache_equals_recomputation(tiny_pair):
    tok, large, _, _ = tiny_pair
    src = LogitSource.of_model(large, "tiny-large")
    ids, mask = _prompts(tok)
    full, cache = src.logits(ids, mask)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = large(input_ids=ids, attention_mask=mask, position_ids=pos).logits
    assert torch.allclose(full, ref, atol=1e-5)
    nxt = full[:, -1].argmax(-1, keepdim=True)  # [B, 1]
    step, _ = src.logits(nxt, torch.ones_like(nxt), cache)
    whole, _ = src.logits(torch.cat([ids, nxt], 1), torch.cat([mask, torch.ones_like(nxt)], 1))
    assert step.shape == (3, 1, large.config.vocab_size)
    assert torch.allclose(step[:, 0], whole[:, -1], atol=1e-4)


def test_proxy_generation_cached_equals_uncached_and_alpha_zero_is_the_large_model(tiny_pair):
    tok, large, small, expert = tiny_pair
    srcs = [LogitSource.of_model(large), LogitSource.of_model(expert, freeze=False), LogitSource.of_model(small)]
    proxy = proxy_model(*srcs, alpha=1.0)
    ids, mask = _prompts(tok)
    eos = tok.eos_token_id
    cached = proxy.generate(ids, mask, max_new_tokens=12, pad_token_id=tok.pad_token_id, eos_token_id=eos)
    uncached = proxy.generate(
        ids, mask, max_new_tokens=12, pad_token_id=tok.pad_token_id, eos_token_id=eos, use_cache=False
    )
    assert cached.shape[1] > ids.shape[1]
    assert torch.equal(cached, uncached)
    # alpha = 0: exactly the large model's own greedy decoding (Hugging Face generate, left-padded)
    plain = proxy_model(*srcs, alpha=0.0)
    ours = generate(plain, tok, ["the movie was", "boring"], max_new_tokens=10)
    theirs = generate(large, tok, ["the movie was", "boring"], max_new_tokens=10)
    assert ours == theirs
    # the proxy differs from the large model once the expert differs from the anti-expert
    assert (proxy(ids, mask).logits - plain(ids, mask).logits).abs().max() > 1e-3


def test_label_scoring_goes_through_the_proxy_and_never_touches_the_large_weights(tiny_pair):
    tok, large, small, expert = tiny_pair
    before = {k: v.clone() for k, v in large.state_dict().items()}
    srcs = [LogitSource.of_model(large), LogitSource.of_model(expert, freeze=False), LogitSource.of_model(small)]
    proxy = proxy_model(*srcs, alpha=1.5)
    ids, mask = _prompts(tok)
    batch = {"input_ids": ids, "attention_mask": mask, "prompt_length": mask.sum(1) * 0 + ids.shape[1]}
    words = torch.tensor([5, 9])
    scores = label_scores(proxy, batch, words)  # the fast path: logits_to_keep through every source
    zl, ze, za = (s.logits(ids, mask)[0][:, -1] for s in srcs)
    assert torch.allclose(scores, (zl + 1.5 * (ze - za))[:, words], atol=1e-4)
    assert all(p.grad is None and not p.requires_grad for p in large.parameters())
    assert all(torch.equal(before[k], v) for k, v in large.state_dict().items())
