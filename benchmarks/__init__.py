"""devmeter's benchmarks: `uv run --extra test python -m benchmarks [--quick]` (see run.py)."""
