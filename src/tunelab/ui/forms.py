"""Form controls made from option dataclasses: a new option appears in the UI without UI code.

Each field becomes a control of its type (checkbox, choice, number, text) labelled with its flag and
its help text; reading the form back gives only the values that differ from the defaults, so the
library's own defaults (a technique's learning rate, say) apply as they do on the command line.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from dataclasses import dataclass
from typing import Any, Literal

import gradio as gr

from tunelab.config import _unwrap_optional, flag_name
from tunelab.errors import TunelabError

NOT_GIVEN = object()


@dataclass
class Control:
    name: str
    annotation: Any
    default: Any  # NOT_GIVEN for a required field
    component: Any
    help: str = ""


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    return NOT_GIVEN


def _component(field: dataclasses.Field, annotation, default, choices: list[str] | None, prefix: str):
    base, optional = _unwrap_optional(annotation)
    label = flag_name(field.name)
    info = field.metadata.get("help", "")
    shown = None if default is NOT_GIVEN else default
    elem_id = f"{prefix}-{field.name}"
    origin = typing.get_origin(base)
    if choices is not None:
        multiselect = origin is list
        return gr.Dropdown(choices=choices, value=shown if shown is not None else ([] if multiselect else None), label=label,
                           info=info, multiselect=multiselect, allow_custom_value=True, elem_id=elem_id)
    if base is bool:
        return gr.Checkbox(value=bool(shown), label=label, info=info, elem_id=elem_id)
    if origin is Literal:
        options = [str(choice) for choice in typing.get_args(base)]
        return gr.Dropdown(choices=([""] if optional else []) + options, value=shown if shown is not None else ("" if optional else None), label=label,
                           info=info + (" (empty: automatic)" if optional else ""), elem_id=elem_id)
    if origin is list and typing.get_origin(typing.get_args(base)[0]) is Literal:
        options = [str(choice) for choice in typing.get_args(typing.get_args(base)[0])]
        return gr.Dropdown(choices=options, value=list(shown or []), multiselect=True, label=label, info=info, elem_id=elem_id)
    if base in (int, float) and optional:  # a Number box cannot stay empty; empty here means "automatic"
        return gr.Textbox(value="" if shown is None else str(shown), label=label, info=info + " (empty: automatic)",
                          elem_id=elem_id)
    if base in (int, float):
        return gr.Number(value=shown, label=label, info=info + (" (empty: automatic)" if optional else ""),
                         precision=0 if base is int else None, elem_id=elem_id)
    if origin is list:
        return gr.Textbox(value="\n".join(map(str, shown or [])), label=label, info=info + " (one per line)", lines=2,
                          elem_id=elem_id)
    return gr.Textbox(value=shown or "", label=label, info=info, elem_id=elem_id)


def build_form(schemas, prefix: str, skip=(), main=(), choices: dict[str, list[str]] | None = None,
               accordion: str = "All options") -> dict[str, Control]:
    """Controls for every field of `schemas` (in this Blocks context): `main` ones first, the rest folded."""
    choices = choices or {}
    fields = []
    for schema in schemas:
        hints = typing.get_type_hints(schema)
        fields += [(field, hints[field.name]) for field in dataclasses.fields(schema) if field.name not in skip]
    controls = {}

    def add(field, annotation):
        default = _default(field)
        component = _component(field, annotation, default, choices.get(field.name), prefix)
        controls[field.name] = Control(field.name, annotation, default, component, component.info or "")

    for field, annotation in fields:
        if field.name in main:
            add(field, annotation)
    rest = [(field, annotation) for field, annotation in fields if field.name not in main]
    if rest:
        with gr.Accordion(accordion, open=False):
            for field, annotation in rest:
                add(field, annotation)
    return controls


def _item(name: str, text: str, item_type):
    try:
        return item_type(text) if item_type in (int, float) else text
    except ValueError:
        raise TunelabError(f"option {name!r}: {text!r} is not a {item_type.__name__}") from None


def read_value(control: Control, value: Any) -> Any:
    """A control's value as the option's type; NOT_GIVEN when it is empty or the default."""
    base, _ = _unwrap_optional(control.annotation)
    if value is None or value == "" or value == []:
        return NOT_GIVEN
    if base in (int, float) and isinstance(value, str):
        value = _item(control.name, value.strip(), base)
    if base is int:
        if float(value) != int(value):
            raise TunelabError(f"option {control.name!r}: {value} is not a whole number")
        value = int(value)
    elif base is float:
        value = float(value)
    elif typing.get_origin(base) is list and isinstance(value, str):
        (item_type,) = typing.get_args(base)
        value = [_item(control.name, line.strip(), item_type) for line in value.splitlines() if line.strip()]
    if value == control.default:
        return NOT_GIVEN
    return value


def read_form(controls: dict[str, Control], received: dict) -> dict[str, Any]:
    """{option: value} for the controls the user changed, from Gradio's {component: value}."""
    values = {}
    for name, control in controls.items():
        value = read_value(control, received.get(control.component))
        if value is not NOT_GIVEN:
            values[name] = value
    return values


def components(*forms: dict[str, Control]) -> set:
    return {control.component for form in forms for control in form.values()}


# how refusals name an option: "--steps must ...", "option 'rank': ...", "unknown option 'learing_rate'", "images: ..."
NAMED_OPTION = re.compile(r"--([a-z0-9-]+)|option '([a-z0-9_]+)'|^([a-z0-9_]+): ")


def named_control(message: str, controls: dict[str, Control]) -> str | None:
    """The first control a refusal message names, if any."""
    for match in NAMED_OPTION.finditer(message):
        name = (match.group(1) or "").replace("-", "_") or match.group(2) or match.group(3)
        if name in controls:
            return name
    return None


def flag_refusal(controls: dict[str, Control], message: str | None) -> list:
    """An update per control: the one the refusal names shows it under its label, the others their help."""
    named = named_control(message, controls) if message else None
    return [gr.update(info=f"⚠ {message}" if name == named else control.help) for name, control in controls.items()]
