"""The experiment suite: runs from a YAML file, and the report made from their results."""
