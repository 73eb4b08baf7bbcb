# A package on purpose: without it pytest imports tests/data/conftest.py as the top-level module "conftest",
# replacing tests/conftest.py in sys.modules, and later `from conftest import make_tiny_llama` in other test
# folders would fail. As a package our conftest is "federated.conftest" and the shared one stays "conftest".
