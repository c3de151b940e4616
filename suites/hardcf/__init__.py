"""HardCF: the mined lists (<model>.json) and the suite that runs them."""
