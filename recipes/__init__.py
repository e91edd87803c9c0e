raise ModuleNotFoundError(
    "recipes/ is not a package: copy a recipe (its README, YAML configs and launch lines) and edit the copy, "
    "e.g. `cp -r recipes/hapo my_hapo`, then `rlpost train my_hapo/qwen2.5-math-1.5b.yaml`. "
    "Library code never imports a recipe; recipes use the library."
)
