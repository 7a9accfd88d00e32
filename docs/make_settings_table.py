"""Write docs/settings.md from napari_dgc.config: every training setting, its default and meaning.

Run ``python docs/make_settings_table.py`` after changing a setting; ``tests/test_config.py``
fails while docs/settings.md differs from what this writes.
"""

from __future__ import annotations

from pathlib import Path

from napari_dgc.config import RETIRED_SETTINGS, Choice, settings_of

HERE = Path(__file__).resolve().parent

HEADER = """# Training settings

Every setting of a training run, generated from `napari_dgc/config.py` by
`docs/make_settings_table.py` (a test keeps this page equal to the code). Give any of them to
`napari-dgc train` as `--set KEY=VALUE` (new runs only); those with an option have it as well;
the train panel shows those with a panel label. A resumed run keeps its own settings except
`steps`, `checkpoint_every` and `device`. [training.md](training.md) explains the method and
each default that deviates from the papers.

| key | default | allowed | option | meaning |
|---|---|---|---|---|
"""


def _allowed(info) -> str:
    if isinstance(info.kind, type) and issubclass(info.kind, Choice):
        return ", ".join(member.value for member in info.kind)
    if info.kind is bool:
        return "true, false"
    low = "" if info.minimum is None else f"{info.minimum:g}"
    high = "" if info.maximum is None else f"{info.maximum:g}"
    bounds = f"{low} .. {high}" if (low or high) else info.kind.__name__
    return bounds + (", null" if info.optional else "")


def _default(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def settings_markdown() -> str:
    """The whole page, one table row per setting."""
    rows = [
        f"| `{info.key}` | {_default(info.default)} | {_allowed(info)} | {info.flag or ''} | {info.help} |"
        for info in settings_of()
    ]
    by_reason: dict[str, list[str]] = {}
    for key in sorted(RETIRED_SETTINGS):
        by_reason.setdefault(RETIRED_SETTINGS[key], []).append(f"`{key}`")
    reasons = "".join(f"* {', '.join(keys)}: {reason}.\n" for reason, keys in by_reason.items())
    return (
        HEADER
        + "\n".join(rows)
        + "\n\n## Retired settings\n\n"
        + "A run folder written by an earlier version may still name these; it opens, segments and "
        + "resumes without them. `--set` refuses them ([training.md](training.md), the method, the "
        + "tenth and the twelfth pass).\n\n"
        + reasons
    )


if __name__ == "__main__":
    (HERE / "settings.md").write_text(settings_markdown(), encoding="utf-8")
    print(HERE / "settings.md")
