"""tsol.bench: the benchmark suite and the tsol-bench command."""
