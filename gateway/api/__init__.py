"""HTTP handlers: thin. Parse, authenticate, call the pipeline, render."""
