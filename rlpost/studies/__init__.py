"""Paper miniatures behind ``rlpost reproduce <name>``: each module exposes ``run(output_dir, seeds, steps, ...)``
and writes ``<output_dir>/table.md`` plus PNG plots (see recipes/<name>/README.md)."""

STUDIES = {"apr": "rlpost.studies.apr", "a2fm": "rlpost.studies.a2fm",
           "constrained_rlhf": "rlpost.studies.constrained_rlhf", "implicit_sft": "rlpost.studies.implicit_sft"}
DEFAULTS = {"apr": {"seeds": [0, 1, 2], "steps": 40}, "a2fm": {"seeds": [0, 1, 2], "steps": 100},  # RL seeds, one SFT
            "constrained_rlhf": {"seeds": [0, 1, 2], "steps": 40}, "implicit_sft": {"seeds": [0, 1, 2], "steps": 128}}


def run_study(name: str, output_dir=None, seeds=None, steps=None, **kwargs) -> dict:
    """``rlpost reproduce <name>`` for the study miniatures: ``rlpost.studies.<name>.run(...)``.

    ``output_dir`` defaults to ``results/<name>``; ``seeds`` / ``steps`` to :data:`DEFAULTS`.
    """
    import importlib
    if name not in STUDIES:
        raise KeyError(f"unknown study {name!r}; known: {', '.join(STUDIES)}")
    module = importlib.import_module(STUDIES[name])
    return module.run(output_dir or f"results/{name}", seeds=seeds if seeds is not None else DEFAULTS[name]["seeds"],
                      steps=steps if steps is not None else DEFAULTS[name]["steps"], **kwargs)
