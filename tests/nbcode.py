"""A notebook cell's Python: its source without the shell (``!``) and magic (``%``) lines, which are not Python."""


def code_of(source: str) -> str:
    return "\n".join(ln for ln in source.splitlines() if not ln.lstrip().startswith(("%", "!")))
