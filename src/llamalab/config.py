"""Typed YAML configs: unknown keys and bad values fail with the file, line, key path and a fix."""

from __future__ import annotations

import difflib
import types
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, model_validator


class LlamalabError(Exception):
    """An error the user can fix; the CLI prints its message without a traceback."""


class StrictModel(BaseModel):
    """Base for every config: unknown keys are errors, never silently ignored; so are inf and nan (`.inf` is a
    YAML float, and no setting means it)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    def __init__(self, /, **data: Any) -> None:
        """Built in Python (`Experiment(task="sentiment", lr=1e-4)`): a bad setting raises the LlamalabError a file
        would (the key named, a misspelt one's likely meaning), not pydantic's ValidationError."""
        try:
            super().__init__(**data)
        except ValidationError as exc:
            raise LlamalabError(describe_errors(type(self), exc, f"{type(self).__name__}(...)")) from None

    # Not a custom __init__ to pydantic: validation (`parse_model`, a nested model) never calls it, so a file's
    # errors keep their file and line, and a key that is not a string is a validation error, not a TypeError.
    __init__.__pydantic_base_init__ = True  # type: ignore[attr-defined]

    @model_validator(mode="before")
    @classmethod
    def _no_yes_no_numbers(cls, data: Any) -> Any:
        """YAML reads yes/no/true as a boolean, which pydantic would take as the number 1 or 0 (`epochs: yes` ran
        one epoch): a setting that is a number refuses one."""
        if isinstance(data, dict):
            for name, field in cls.model_fields.items():
                if isinstance(data.get(name), bool) and _takes_numbers(field.annotation):
                    raise KeyProblem(name, f"is a number, not yes/no (got {str(data[name]).lower()})")
        return data


def _takes_numbers(annotation: Any) -> bool:
    """Whether a field takes a number and no boolean (int, float, or a union holding one of them)."""
    kinds = get_args(annotation) if get_origin(annotation) in (Union, types.UnionType) else (annotation,)
    return bool(set(kinds) & {int, float}) and bool not in kinds


class KeyProblem(ValueError):
    """Raised by a whole-model validator about one of the model's keys: the error then names that key and its
    line, not the model's first line."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


M = TypeVar("M", bound=StrictModel)


def load_yaml(path: Path) -> tuple[Any, yaml.Node | None]:
    """Parse a YAML file, returning the data and its node tree (for line numbers in errors)."""
    if not path.is_file():
        raise LlamalabError(f"{path}: file not found")
    text = read_utf8(path, "save the file as UTF-8")
    try:
        node = yaml.compose(text)
        if problem := _alias_problem(node):
            raise LlamalabError(f"{path}:{problem[1]}: {problem[0]}")
        if repeated := _repeated_key(node):
            key, line, first = repeated
            raise LlamalabError(f"{path}:{line}: key {key!r} is given twice (first on line {first}); YAML would "
                                "silently keep the last: keep one")
        return yaml.safe_load(text), node
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise LlamalabError(f"{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    except (ValueError, OverflowError) as exc:  # PyYAML parses the text but cannot build a value, e.g. 2024-02-30
        line = _unbuildable_line(node)
        where = f"{path}:{line}" if line else str(path)
        raise LlamalabError(f"{where}: a value YAML cannot read ({exc}); quote it if it is meant as text") from None


def read_utf8(path: Path, fix: str) -> str:
    """A text file's contents; bytes that are not UTF-8 are an error naming the line, the byte and `fix`."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise LlamalabError(f"{path}:{line}: not UTF-8 (byte 0x{raw[exc.start]:02x}); {fix}") from None


_MOST_VALUES = 1_000_000  # values a config may expand to through aliases: a config is not a data file


def _alias_problem(node: yaml.Node | None) -> tuple[str, int] | None:
    """An alias that refers to itself, or aliases that expand past _MOST_VALUES ("billion laughs"), with a line;
    aliases are otherwise fine (`<<: *defaults`)."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(item: yaml.Node) -> int:
        if id(item) in sizes:
            return sizes[id(item)]
        if id(item) in open_nodes:
            raise _Cycle(item.start_mark.line + 1)
        open_nodes.add(id(item))
        children = item.value if isinstance(item, yaml.SequenceNode | yaml.MappingNode) else []
        total = 1 + sum(size(part) for child in children for part in (child if isinstance(child, tuple) else (child,)))
        open_nodes.discard(id(item))
        sizes[id(item)] = total
        return total

    if node is None:
        return None
    try:
        total = size(node)
    except _Cycle as cycle:
        return "an anchor holds an alias to itself, which no config can mean: write the value out", cycle.line
    if total > _MOST_VALUES:
        return f"its aliases expand to {total:,} values (at most {_MOST_VALUES:,}): write the values out", 1
    return None


class _Cycle(Exception):
    def __init__(self, line: int) -> None:
        self.line = line


def _repeated_key(node: yaml.Node | None) -> tuple[str, int, int] | None:
    """The first mapping key given twice in one mapping: (key, its second line, its first line)."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[str, int] = {}
        for key, value in node.value:
            if isinstance(key, yaml.ScalarNode):
                if key.value in seen and key.value != "<<":
                    return key.value, key.start_mark.line + 1, seen[key.value]
                seen[key.value] = key.start_mark.line + 1
            if found := _repeated_key(value):
                return found
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            if found := _repeated_key(item):
                return found
    return None


def _unbuildable_line(node: yaml.Node | None) -> int | None:
    """The 1-based line of the first scalar PyYAML's safe loader cannot build into a value."""
    if isinstance(node, yaml.ScalarNode):
        try:
            yaml.SafeLoader("").construct_object(node)
        except (ValueError, OverflowError):
            return node.start_mark.line + 1
        return None
    children = node.value if isinstance(node, yaml.SequenceNode | yaml.MappingNode) else []
    for child in children:
        for part in child if isinstance(child, tuple) else (child,):
            if (line := _unbuildable_line(part)) is not None:
                return line
    return None


def parse_model(model: type[M], data: Any, source: str, node: yaml.Node | None = None,
                overridden: Iterable[str] = ()) -> M:
    """Validate `data` against `model`; on failure raise one LlamalabError listing every problem. A problem with a
    key in (or under) `overridden` (set on the command line) is named as such, not by a line of the file."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise LlamalabError(describe_errors(model, exc, source, node, overridden)) from None


def describe_errors(model: type[StrictModel], exc: ValidationError, source: str, node: yaml.Node | None = None,
                    overridden: Iterable[str] = ()) -> str:
    """Every problem pydantic found, one line each, naming the key (and its line in `node`'s file)."""
    problems = [_describe(model, err, source, node, tuple(overridden))
                for err in _merge_union_errors(model, exc.errors())]
    return "\n".join(dict.fromkeys(problems))


def _merge_union_errors(model: type[StrictModel], errors: list) -> list:
    """One error per key whose value fits none of a union's types (`batch_size: 0`, neither a whole number >= 1
    nor 'auto'): pydantic gives one per member, located under the member's internal name ("constrained-int")."""
    merged: list = []
    for err in errors:
        loc = err["loc"]
        tagged = (err["type"] not in ("extra_forbidden", "missing") and len(loc) > 1 and isinstance(loc[-1], str)
                  and _is_union(_annotation_at(model, list(loc[:-1])))
                  and not isinstance(err.get("ctx", {}).get("error"), KeyProblem))
        previous = merged[-1] if merged else None
        if tagged and previous is not None and previous.get("union") == loc[:-1]:
            previous["msg"] += f", or {err['msg'][0].lower()}{err['msg'][1:]}"
            continue
        merged.append({**err, "loc": loc[:-1], "union": loc[:-1]} if tagged else err)
    return merged


def load_config(model: type[M], path: Path) -> M:
    """Load and validate a YAML config file."""
    data, node = load_yaml(path)
    return parse_model(model, data, str(path), node)


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """Command-line `a.b=value` overrides as a dict of dotted keys (values parsed as YAML)."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise LlamalabError(f"override {item!r}: expected key=value, e.g. learning_rate=1e-4")
        try:
            overrides[key] = yaml.safe_load(raw)
        except (yaml.YAMLError, ValueError, OverflowError) as exc:
            why = getattr(exc, "problem", None) or exc
            raise LlamalabError(f"override {item!r}: the value is not valid YAML ({why}); quote it if it is text, "
                                f"e.g. '{key}=\"{raw}\"'") from None
    return overrides


def apply_overrides(data: dict, overrides: Mapping[str, Any]) -> dict:
    """A copy of the nested dict `data` with `overrides` applied: keys may be dotted (`lora.r`), and a dict
    value is merged into the section it names (`lora={"r": 4}`) rather than replacing it."""
    result = yaml.safe_load(yaml.safe_dump(data))
    for key, value in overrides.items():
        target = result
        *parents, leaf = key.split(".")
        for part in parents:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise LlamalabError(f"override {key}={value!r}: {part!r} is not a section")
        if isinstance(value, Mapping) and isinstance(target.get(leaf), dict):
            target[leaf] = apply_overrides(target[leaf], value)
        else:
            target[leaf] = value
    return result


_SHORTHANDS = {"lr": "learning_rate", "bs": "batch_size", "steps": "max_steps", "epoch": "epochs",
               "n_epochs": "epochs", "num_train_epochs": "epochs", "per_device_train_batch_size": "batch_size",
               "gradient_accumulation_steps": "grad_accum", "model": "base_model"}


def _describe(model: type[StrictModel], err: dict, source: str, node: yaml.Node | None,
              overridden: tuple[str, ...] = ()) -> str:
    loc = [p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-"))]
    if isinstance(problem := err.get("ctx", {}).get("error"), KeyProblem):
        loc.append(problem.key)
    path = ".".join(str(p) for p in loc) or "(top level)"
    from_command_line = any(path == key or path.startswith(f"{key}.") for key in overridden)
    line = None if from_command_line else _line_of(node, loc)
    where = f"{source}:{line}" if line else source
    if not loc and err["type"] in ("model_type", "dict_type"):  # the whole file is a list, a number or text
        got = err.get("input")
        what = "a list" if isinstance(got, list) else f"{got!r}"
        return f"{where}: expected settings as `key: value` lines, but the file holds {what}"
    if err["type"] == "extra_forbidden":
        known = _fields_at(model, loc[:-1])
        meant = _SHORTHANDS.get(str(loc[-1]))  # what other tools call it: difflib would offer `lora` for `lr`
        close = [meant] if meant in known else difflib.get_close_matches(str(loc[-1]), known, n=1, cutoff=0.5)
        parent = ".".join(str(p) for p in loc[:-1])
        suggestion = f"{parent}.{close[0]}" if close and from_command_line and parent else close[0] if close else ""
        hint = f"did you mean {suggestion!r}?" if close else f"known keys: {', '.join(sorted(known))}"
        return f"{where}: unknown key {path!r}: {hint}"
    if err["type"] == "missing":
        return f"{where}: missing required key {path!r}"
    if isinstance(problem, KeyProblem):
        return f"{where}: key {path!r}: {problem}"
    got = err.get("input")
    shown = f" (got {got!r})" if not isinstance(got, dict | list) else ""
    return f"{where}: key {path!r}: {err['msg'].removeprefix('Value error, ')}{shown}"


def _annotation_at(model: type[BaseModel], loc: list) -> Any:
    """The annotation of the field at `loc` (None where `loc` is no field: a dict's key, a list's index)."""
    current: Any = model
    annotation = None
    for part in loc:
        if not (isinstance(current, type) and issubclass(current, BaseModel)) or not isinstance(part, str):
            return None
        field = current.model_fields.get(part)
        if field is None:
            return None
        annotation = field.annotation
        current = _model_in(annotation)
    return annotation


def _is_union(annotation: Any) -> bool:
    """A union of several types other than None (`int | Literal["auto"]`), whose members pydantic reports apart."""
    import types
    from typing import Union

    if get_origin(annotation) not in (Union, types.UnionType):
        return False
    return len([a for a in get_args(annotation) if a is not type(None)]) > 1


def _fields_at(model: type[BaseModel], loc: list) -> list[str]:
    """The field names of the nested model found at `loc`, for suggestions."""
    current: Any = model
    in_mapping = False
    for part in loc:
        if in_mapping or isinstance(part, int) or not (isinstance(current, type) and issubclass(current, BaseModel)):
            in_mapping = False  # a key of a dict field (e.g. an api_models name) is not a field name
            continue
        field = current.model_fields.get(part)
        if field is None:
            return []
        in_mapping = get_origin(field.annotation) is dict
        current = _model_in(field.annotation)
    if isinstance(current, type) and issubclass(current, BaseModel):
        return [name for name, field in current.model_fields.items() if not field.exclude]  # not internal ones
    return []


def _model_in(annotation: Any) -> Any:
    """The first BaseModel class inside an annotation like `Foo | None` or `list[Foo]`."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _line_of(node: yaml.Node | None, loc: list) -> int | None:
    """1-based line of the YAML node at `loc`, or of its deepest existing parent."""
    line = node.start_mark.line + 1 if node is not None else None
    for part in loc:
        if node is None:
            break
        line = node.start_mark.line + 1
        if isinstance(node, yaml.MappingNode):
            match = next(((k, v) for k, v in node.value if k.value == str(part)), None)
            if match is None:
                return line
            line, node = match[0].start_mark.line + 1, match[1]
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            return line
    return line
