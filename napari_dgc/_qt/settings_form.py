"""The train panel's settings form, generated with magicgui from :func:`napari_dgc.config.settings_of`.

Every setting with a panel ``label`` gets a field: ``basic`` ones in the main form, the others
in the advanced one. The widget follows the setting's kind (int: spin box with its bounds,
float: a spin box that reads and writes ``1e-4``, bool: check box, a choice: combo box), its
tooltip is the setting's ``help`` and its value the config's default, so nothing here repeats a
default, a bound or a label of the configuration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

from magicgui.application import use_app
from magicgui.widgets import CheckBox, ComboBox, Container, LineEdit, SpinBox
from magicgui.widgets.bases import RangedWidget, ValueWidget
from qtpy.QtGui import QValidator
from qtpy.QtWidgets import QDoubleSpinBox

from napari_dgc.config import Choice, SettingInfo, TrainConfig, get_setting, settings_of

#: Upper bound of an int setting that has none (what Qt's spin boxes hold).
INT_MAX = 2**31 - 1
#: Upper bound of a float setting that has none.
FLOAT_MAX = 1e6


class ScientificSpinBox(QDoubleSpinBox):
    """A spin box that shows and accepts values like ``1e-4`` (learning rates, loss weights)."""

    def __init__(self, minimum: float = 0.0, maximum: float = FLOAT_MAX, parent=None) -> None:
        super().__init__(parent)
        self.setDecimals(12)
        self.setRange(minimum, maximum)

    def textFromValue(self, value: float) -> str:
        return f"{value:g}"

    def valueFromText(self, text: str) -> float:
        return float(text)

    def validate(self, text: str, position: int):
        try:
            value = float(text)
        except ValueError:
            return QValidator.Intermediate, text, position
        if self.minimum() <= value <= self.maximum():
            return QValidator.Acceptable, text, position
        return QValidator.Intermediate, text, position

    def stepBy(self, steps: int) -> None:
        # Multiply/divide by ~2 per step: additive steps make no sense across decades.
        self.setValue(self.value() * (2.0**steps))


def _with_scientific_spin_box(backend: type) -> type:
    """Magicgui's Qt float spin box backend, built on :class:`ScientificSpinBox`."""

    class ScientificBackend(backend):
        def __init__(self, **kwargs) -> None:
            # Skip the backend's own __init__ (it builds a QDoubleSpinBox); its base takes the class.
            super(backend, self).__init__(ScientificSpinBox, **kwargs)

    return ScientificBackend


class ScientificFloatSpinBox(RangedWidget[float]):
    """A magicgui float spin box showing ``1e-05`` rather than ``0.00001000``."""

    def __init__(self, **kwargs) -> None:
        kwargs["widget_type"] = _with_scientific_spin_box(use_app().get_obj("FloatSpinBox"))
        super().__init__(**kwargs)


def setting_widget(info: SettingInfo, devices: Sequence[str]) -> ValueWidget:
    """The magicgui widget of one setting (``device`` offers ``devices``)."""
    options = {"name": info.key.replace(".", "__"), "label": info.label, "tooltip": info.help}
    if info.key == "device":
        return ComboBox(choices=list(devices), value=devices[0], **options)
    if isinstance(info.kind, type) and issubclass(info.kind, Choice):
        return ComboBox(choices=info.kind, value=info.default, **options)
    if info.optional or info.kind is str:
        # Free text; a value that may be null is read as JSON (empty: null).
        return LineEdit(value="" if info.default is None else str(info.default), **options)
    if info.kind is bool:
        return CheckBox(value=info.default, **options)
    low = 0 if info.minimum is None else info.minimum
    if info.kind is int:
        high = INT_MAX if info.maximum is None else info.maximum
        return SpinBox(value=info.default, min=int(low), max=int(high), **options)
    high = FLOAT_MAX if info.maximum is None else info.maximum
    return ScientificFloatSpinBox(value=info.default, min=float(low), max=float(high), **options)


class SettingsForm:
    """The labelled settings of :class:`TrainConfig` as two magicgui containers.

    Parameters
    ----------
    devices : sequence of str
        Choices of the ``device`` field, the default first.

    Attributes
    ----------
    fields : dict of str to ValueWidget
        Field of each labelled setting, by dotted key (``"optim.learning_rate"``).
    basic, advanced : magicgui.widgets.Container
        The main form and the advanced options (embed their ``.native``).
    """

    def __init__(self, devices: Sequence[str]) -> None:
        self._infos = {info.key: info for info in settings_of() if info.label is not None}
        self.fields: dict[str, ValueWidget] = {
            key: setting_widget(info, devices) for key, info in self._infos.items()
        }
        self.basic = Container(widgets=[self.fields[k] for k, i in self._infos.items() if i.basic])
        self.advanced = Container(widgets=[self.fields[k] for k, i in self._infos.items() if not i.basic])
        for container in (self.basic, self.advanced):
            container.margins = (0, 0, 0, 0)

    def config(self) -> TrainConfig:
        """The defaults with the form's values.

        Raises
        ------
        ConfigError
            A value the configuration refuses (naming the setting).
        """
        return TrainConfig().with_settings({key: self._read(key) for key in self.fields})

    def _read(self, key: str):
        value = self.fields[key].value
        info = self._infos[key]
        if info.optional and not value.strip():
            return None  # an empty field of a setting that may be null (a file not given)
        if info.optional and info.kind is not str:
            return json.loads(value)
        return value

    def set_config(self, config: TrainConfig) -> None:
        """Show ``config``'s values (a device that is not offered shows the default choice)."""
        for key, widget in self.fields.items():
            value = get_setting(config, key)
            if isinstance(widget, ComboBox) and key == "device":
                value = value if value in widget.choices else widget.choices[0]
            elif isinstance(widget, LineEdit):
                value = "" if value is None else (value if isinstance(value, str) else json.dumps(value))
            widget.value = value
