"""Circuit hypotheses as files: see interp.circuits.format and circuits/README.md."""
