"""Training configs: `base` (the schema: every field, documented, with the paper's values), `recipes` (the
configurations behind the repository's `configs/*.py` files) and `sweeps` (named override grids)."""
