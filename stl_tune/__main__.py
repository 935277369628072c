"""`python -m stl_tune ...`: the `stl-tune` command; `stl-tune run` starts its workers this way."""

from stl_tune.cli import app

app(prog_name="stl-tune")
