"""`python -m stcl_jax.data.build`: see `stcl_jax.data.build.cli`."""

from stcl_jax import cli_errors
from stcl_jax.data.build import cli

if __name__ == "__main__":
    cli_errors.run(cli.main)
