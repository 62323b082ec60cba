"""`python -m stcl_jax.data.synthetic`: see `stcl_jax.data.synthetic.cli`."""

from stcl_jax import cli_errors
from stcl_jax.data.synthetic import cli

if __name__ == "__main__":
    cli_errors.run(cli.main)
