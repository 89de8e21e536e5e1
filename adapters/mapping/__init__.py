"""The mapping engine: a laboratory's own codes, units and fields → the lab result, from one YAML file."""
