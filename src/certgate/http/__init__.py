"""Sans-IO HTTP helpers: request-target normalisation, header rewriting, responses."""
