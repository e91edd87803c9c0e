"""Paper miniatures behind ``rlpost reproduce <name>``: each module exposes ``run(output_dir, seeds, steps, ...)``
and writes ``<output_dir>/table.md`` plus PNG plots (see recipes/<name>/README.md)."""
