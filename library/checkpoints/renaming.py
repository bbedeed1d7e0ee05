"""Prefix-table renaming shared by the UNet and VAE key maps.

A table row says: module path `source` in one layout is module path `target` in the other, and the first
sub-module below it may be renamed too (`inner`). Lookups try the longest prefix first and only match at a
dot boundary, so `input_blocks.1` never matches `input_blocks.10`.
"""


class PrefixRenamer:
    def __init__(self, rows):
        """rows: iterable of (source_prefix, target_prefix, inner_renames dict or None)."""
        rows = [(source, target, inner or {}) for source, target, inner in rows]
        self._forward = sorted(rows, key=lambda row: -len(row[0]))
        reverse = [(target, source, {v: k for k, v in inner.items()}) for source, target, inner in rows]
        self._backward = sorted(reverse, key=lambda row: -len(row[0]))

    def forward(self, name):
        """source name -> target name, or None when no row covers it."""
        return _rename(name, self._forward)

    def backward(self, name):
        """target name -> source name, or None when no row covers it."""
        return _rename(name, self._backward)


def rename_tensors(tensors, rename, fit=None):
    """Apply `rename(name) -> new name or None` to every tensor; `fit(old, new, array)` may reshape.

    Returns ({new name: array}, [names that do not map]).
    """
    converted, unmapped = {}, []
    for name, array in tensors.items():
        target = rename(name)
        if target is None:
            unmapped.append(name)
            continue
        converted[target] = fit(name, target, array) if fit else array
    return converted, unmapped


def _rename(name, rows):
    for source, target, inner in rows:
        if name == source:
            return target
        if name.startswith(source + "."):
            return f"{target}.{_rename_inner(name[len(source) + 1:], inner)}"
    return None


def _rename_inner(rest, renames):
    for source in sorted(renames, key=len, reverse=True):
        if rest == source or rest.startswith(source + "."):
            return renames[source] + rest[len(source):]
    return rest
