"""Editing algorithms. `api` (EditReport, the Editor protocol), `hparams` (typed defaults and
overrides), the concrete editors (one module or package each), `keys` and `covariance` (math
several editors share) and `registry` (name -> editor, loaded lazily). Import what you need from
its module; this package imports nothing, so loading one editor loads no other."""
