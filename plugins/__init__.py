"""Built-in plugins: one folder per model family, each registered through the `priorswap` entry points."""
