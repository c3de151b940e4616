"""editguard's shipped test suites, installed as the package `editguard_suites` (the folder is
`suites/` in the repository). Run one from any directory with

    pytest --pyargs editguard_suites.hardcf --editor=rome --model=smollm2-135m

Each suite folder is a subpackage; its case files (hardcf/<model>.json, hardedit/cases.json)
ship beside it as package data."""
