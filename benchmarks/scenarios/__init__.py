"""One module per group of scenarios; each exposes ``run(bench) -> {number: section}``."""
