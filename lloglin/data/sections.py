"""Config sections read into dataclasses: one place that turns `config.<key>` (a ConfigDict, a
plain dict from a saved run, or absent) into the dataclass's fields and refuses unknown keys."""

import dataclasses


def section_fields(config, key: str, cls, where: str | None = None) -> dict:
  """`config.<key>` as a dict of `cls`'s fields (empty when the section is missing); an unknown
  key is a ValueError naming `where` (default `key`), the keys and the valid fields."""
  section = config.get(key) or {}
  section = section.to_dict() if hasattr(section, "to_dict") else dict(section)
  known = {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(section) - known)
  if unknown:
    raise ValueError(f"{where or key}: unknown option(s) {unknown}; expected {sorted(known)}")
  return section
