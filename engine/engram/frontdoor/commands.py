"""The command table: flags, arity and key positions of every Valkey command, read from ``COMMAND``.

The front door consults it for every client command, so lookups and key extraction are cheap:
names are matched through a dict, and the common one-range key spec takes a precomputed slice.
Key extraction follows Valkey's key-spec algorithm (``getKeysUsingKeySpecs``) so it agrees with
``COMMAND GETKEYS``; where Valkey itself cannot tell the keys from the specs, it returns ``None``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

__all__ = ["CommandSpec", "CommandTable", "CommandTableError", "KeySpec"]

_LL_MIN = -(2**63)
_LL_MAX = 2**63 - 1
_EMPTY: Mapping[bytes, CommandSpec] = MappingProxyType({})


class CommandTableError(ValueError):
    """The ``COMMAND`` reply could not be understood."""


@dataclass(frozen=True, slots=True)
class KeySpec:
    """One key specification of a command, as ``COMMAND`` describes it (see Valkey's key-specs docs)."""

    begin_search: str  # "index", "keyword" or "unknown"
    find_keys: str  # "range", "keynum" or "unknown"
    flags: frozenset[str] = frozenset()  # RO/RW/OW/RM, access/insert/update/delete, incomplete, ...
    index: int = 0  # begin_search index: absolute argument position
    keyword: bytes = b""  # begin_search keyword, upper-cased
    startfrom: int = 0  # begin_search keyword: where to start looking; negative counts from the end
    lastkey: int = 0  # range: last key relative to the first, or negative from the end
    keystep: int = 1  # range and keynum: distance between keys
    limit: int = 0  # range with lastkey -1: only 1/limit of the remaining arguments are keys
    keynumidx: int = 0  # keynum: position of the key count, relative to the begin_search result
    firstkey: int = 1  # keynum: first key, relative to the begin_search result

    @property
    def incomplete(self) -> bool:
        """Valkey says this spec may miss keys, so its answer cannot be trusted on its own."""
        return "incomplete" in self.flags

    @property
    def not_key(self) -> bool:
        """The spec names something routed like a key that is not a key (a shard channel)."""
        return "not_key" in self.flags

    @property
    def variable_flags(self) -> bool:
        """The key's access flags depend on the other arguments (SET ... GET, BITFIELD, GEORADIUS)."""
        return "variable_flags" in self.flags

    @property
    def unknown(self) -> bool:
        """The spec cannot locate keys at all (SORT's BY/GET/STORE)."""
        return self.begin_search == "unknown" or self.find_keys == "unknown"

    @property
    def writes(self) -> bool:
        """The keys found by this spec may be modified (any of RW, OW, RM)."""
        return not self.flags.isdisjoint(("RW", "OW", "RM"))


@dataclass(frozen=True, slots=True)
class CommandSpec:
    """One Valkey command or subcommand: name (``get``, ``client|setname``), arity, flags, key specs."""

    name: str
    arity: int
    flags: frozenset[str]
    key_specs: tuple[KeySpec, ...] = ()
    categories: frozenset[str] = frozenset()
    tips: frozenset[str] = frozenset()
    subcommands: Mapping[bytes, CommandSpec] = field(
        default_factory=lambda: _EMPTY, compare=False, hash=False, repr=False
    )

    # Precomputed once so the per-command checks are attribute reads.
    is_write: bool = field(init=False, compare=False, repr=False)
    is_readonly: bool = field(init=False, compare=False, repr=False)
    is_blocking: bool = field(init=False, compare=False, repr=False)
    is_pubsub: bool = field(init=False, compare=False, repr=False)
    is_admin: bool = field(init=False, compare=False, repr=False)
    is_noscript: bool = field(init=False, compare=False, repr=False)
    is_fast: bool = field(init=False, compare=False, repr=False)
    no_multi: bool = field(init=False, compare=False, repr=False)
    has_movable_keys: bool = field(init=False, compare=False, repr=False)
    runs_script: bool = field(init=False, compare=False, repr=False)
    may_write: bool = field(init=False, compare=False, repr=False)
    is_container: bool = field(init=False, compare=False, repr=False)
    keys_reliable: bool = field(init=False, compare=False, repr=False)
    _fast_range: tuple[int, int, int] | None = field(init=False, compare=False, repr=False)
    _ambiguous_keywords: frozenset[bytes] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        flags = self.flags
        put = object.__setattr__
        put(self, "is_write", "write" in flags)
        put(self, "is_readonly", "readonly" in flags)
        put(self, "is_blocking", "blocking" in flags)
        put(self, "is_pubsub", "pubsub" in flags)
        put(self, "is_admin", "admin" in flags)
        put(self, "is_noscript", "noscript" in flags)
        put(self, "is_fast", "fast" in flags)
        put(self, "no_multi", "no_multi" in flags)
        put(self, "has_movable_keys", "movablekeys" in flags)
        # EVAL/EVALSHA/FCALL (and their _RO forms) are the @scripting commands that take keys.
        runs_script = "@scripting" in self.categories and "no_mandatory_keys" in flags
        put(self, "runs_script", runs_script)
        # Valkey does not flag EVAL or FCALL as writes: the script decides, so assume it may.
        put(self, "may_write", "write" in flags or (runs_script and "readonly" not in flags))
        put(self, "is_container", bool(self.subcommands))
        put(self, "keys_reliable", not any(s.unknown or s.incomplete for s in self.key_specs))
        put(self, "_fast_range", _fast_range(self.key_specs))
        # GEORADIUS takes STORE or STOREDIST and the last one given wins, while a keyword spec
        # finds the first: when such keywords repeat, the specs cannot say which key is written.
        put(
            self,
            "_ambiguous_keywords",
            frozenset(s.keyword for s in self.key_specs if s.begin_search == "keyword" and s.variable_flags),
        )

    def keys(self, args: Sequence[bytes], *, include_not_keys: bool = False) -> list[bytes] | None:
        """The keys of this invocation, or None when the key specs cannot tell them reliably."""
        fast = self._fast_range
        if fast is not None:
            first, lastkey, step = fast
            argc = len(args)
            last = first + lastkey if lastkey >= 0 else argc + lastkey
            if last >= argc:
                last = argc - 1
            if last < first:
                return []
            found = args[first : last + 1 : step]
            return found if isinstance(found, list) else list(found)
        return _keys_from_specs(self, args, include_not_keys)


def _fast_range(specs: tuple[KeySpec, ...]) -> tuple[int, int, int] | None:
    """(first, lastkey, step) when the only spec is a plain index/range one, else None."""
    if len(specs) != 1:
        return None
    spec = specs[0]
    if (
        spec.begin_search != "index"
        or spec.find_keys != "range"
        or spec.limit != 0
        or spec.incomplete
        or spec.not_key
        or spec.keystep < 1
    ):
        return None
    return spec.index, spec.lastkey, spec.keystep


def _keys_from_specs(cmd: CommandSpec, args: Sequence[bytes], include_not_keys: bool) -> list[bytes] | None:
    """Valkey's key-spec walk; out-of-range positions are clamped to the arguments present."""
    argc = len(args)
    if cmd._ambiguous_keywords and _keywords_repeat(cmd, args):
        return None
    found: list[bytes] = []
    for spec in cmd.key_specs:
        if spec.not_key and not include_not_keys:
            continue
        if spec.unknown:
            return None
        if spec.begin_search == "index":
            first = spec.index
        else:
            first = _find_keyword(args, spec.keyword, spec.startfrom)
            if first == 0:
                # The optional keyword is absent: this spec has no keys, and is not incomplete.
                continue
        if spec.find_keys == "range":
            step = spec.keystep
            if spec.lastkey >= 0:
                last = first + spec.lastkey
            elif spec.limit == 0:
                last = argc + spec.lastkey
            else:
                last = first + (max(argc - first, 0) // spec.limit + spec.lastkey)
        else:  # keynum
            count_at = first + spec.keynumidx
            if count_at < 0 or count_at >= argc:
                continue
            numkeys = _parse_count(args[count_at])
            if numkeys is None or numkeys < 0:
                continue  # Valkey refuses the command: there are no keys to report
            step = spec.keystep
            first += spec.firstkey
            last = first + (min(numkeys, argc) - 1) * step
        if spec.incomplete:
            return None
        if step < 1 or first < 0:
            continue
        if last >= argc:
            last = argc - 1  # too few arguments: Valkey will refuse it, report what is there
        if last < first:
            continue
        found.extend(args[first : last + 1 : step])
    return found


def _find_keyword(args: Sequence[bytes], keyword: bytes, startfrom: int) -> int:
    """Position after the keyword, or 0; searched over exactly the positions Valkey searches.

    Forward searches stop before the last argument; backward ones (negative startfrom) stop
    before argument 1.
    """
    argc = len(args)
    if startfrom > 0:
        positions = range(startfrom, argc - 1)
    else:
        start = argc + startfrom
        positions = range(start, 1, -1) if start < argc else range(0)
    for i in positions:
        if _is_keyword(args[i], keyword):
            return i + 1
    return 0


def _keywords_repeat(cmd: CommandSpec, args: Sequence[bytes]) -> bool:
    """True when the last-one-wins keywords of cmd occur more than once where its specs search."""
    seen = 0
    start = min(s.startfrom for s in cmd.key_specs if s.begin_search == "keyword" and s.variable_flags)
    for i in range(max(start, 1), len(args) - 1):
        arg = args[i]
        if any(_is_keyword(arg, kw) for kw in cmd._ambiguous_keywords):
            seen += 1
            if seen > 1:
                return True
    return False


def _is_keyword(arg: bytes, keyword: bytes) -> bool:
    """Case-insensitive match that, like Valkey's strcasecmp, ends the argument at a NUL byte."""
    try:
        if len(arg) != len(keyword):
            if b"\0" not in arg:
                return False
            arg = arg.partition(b"\0")[0]
        return arg.upper() == keyword
    except (AttributeError, TypeError):
        return False


def _parse_count(raw: bytes) -> int | None:
    """A 64-bit integer in Valkey's strict form (no sign '+', no spaces, no leading zeros), or None."""
    if not isinstance(raw, bytes | bytearray) or not raw or len(raw) > 20:
        return None
    digits = raw[1:] if raw[:1] == b"-" else raw
    if not digits.isdigit() or (digits[:1] == b"0" and raw != b"0"):
        return None
    value = int(raw)
    return value if _LL_MIN <= value <= _LL_MAX else None


class CommandTable:
    """Every command a Valkey server knows, looked up by the arguments of an invocation."""

    def __init__(self, commands: Iterable[CommandSpec]) -> None:
        self._commands = list(commands)
        self._by_name: dict[bytes, CommandSpec] = {}
        for spec in self._commands:
            name = spec.name.encode()
            # Clients send either case; storing both spares a .lower() on almost every lookup.
            self._by_name[name] = spec
            self._by_name[name.upper()] = spec

    @classmethod
    def from_command_reply(cls, reply: Sequence[Any]) -> CommandTable:
        """Build the table from the decoded reply of ``COMMAND`` (RESP2 lists or RESP3 maps)."""
        if not isinstance(reply, list | tuple) or not reply:
            raise CommandTableError(
                f"COMMAND reply is {type(reply).__name__} {reply!r:.80}, not a list of commands: "
                "pass the raw reply of COMMAND, not one parsed by a client library's callback"
            )
        return cls(_parse_command(entry) for entry in reply)

    def __len__(self) -> int:
        return len(self._commands)

    def __iter__(self) -> Iterator[CommandSpec]:
        """Every top-level command; subcommands hang off their container's ``subcommands``."""
        return iter(self._commands)

    def get(self, name: str) -> CommandSpec | None:
        """The command or subcommand called name (``get``, ``client|setname``), any case."""
        top, _, sub = name.lower().partition("|")
        spec = self._by_name.get(top.encode())
        if spec is not None and sub:
            return spec.subcommands.get(sub.encode())
        return spec

    def lookup(self, args: Sequence[bytes]) -> CommandSpec | None:
        """The spec for an invocation (subcommand when known), or None for an unknown command."""
        if not args:
            return None
        name = args[0]
        try:
            spec = self._by_name.get(name)
            if spec is None:
                spec = self._by_name.get(name.lower())
                if spec is None:
                    return None
        except (AttributeError, TypeError):
            return None
        subs = spec.subcommands
        if subs and len(args) > 1:
            sub = args[1]
            try:
                found = subs.get(sub) or subs.get(sub.lower())
            except (AttributeError, TypeError):
                found = None
            if found is not None:
                return found
        # A container without a known subcommand: Valkey will answer with the error.
        return spec

    def keys(
        self, spec: CommandSpec, args: Sequence[bytes], *, include_not_keys: bool = False
    ) -> list[bytes] | None:
        """The keys of this invocation of spec, or None when they cannot be known reliably.

        include_not_keys also returns shard channels (SPUBLISH, SSUBSCRIBE), which route like keys.
        """
        if include_not_keys:
            return _keys_from_specs(spec, args, True)
        return spec.keys(args)


def _parse_command(entry: Sequence[Any]) -> CommandSpec:
    """One ``COMMAND`` entry: name, arity, flags, first, last, step[, categories, tips, specs, subs]."""
    try:
        name = _text(entry[0]).lower()
        arity = int(entry[1])
        flags = frozenset(_text(f).lower() for f in entry[2])
        categories = frozenset(_text(c) for c in entry[6]) if len(entry) > 6 else frozenset()
        tips = frozenset(_text(t) for t in entry[7]) if len(entry) > 7 else frozenset()
        if len(entry) > 8:
            key_specs = tuple(_parse_key_spec(s) for s in entry[8])
        else:
            key_specs = _legacy_key_specs(int(entry[3]), int(entry[4]), int(entry[5]), flags)
        subs = entry[9] if len(entry) > 9 and entry[9] else ()
        subcommands = {}
        for sub_entry in subs:
            sub = _parse_command(sub_entry)
            subcommands[sub.name.partition("|")[2].encode()] = sub
    except (IndexError, TypeError, ValueError, AttributeError, KeyError) as exc:
        raise CommandTableError(
            f"cannot read COMMAND entry {entry!r:.120}: {exc}; pass the raw reply of COMMAND "
            "(a list per command, key specs as maps or flat key/value lists)"
        ) from exc
    return CommandSpec(
        name=name,
        arity=arity,
        flags=flags,
        key_specs=key_specs,
        categories=categories,
        tips=tips,
        subcommands=MappingProxyType(subcommands) if subcommands else _EMPTY,
    )


def _parse_key_spec(raw: Any) -> KeySpec:
    """One key spec; RESP2 gives it as a flat key/value list, RESP3 as a map."""
    spec = _as_map(raw)
    begin = _as_map(spec["begin_search"])
    find = _as_map(spec["find_keys"])
    begin_type = _text(begin.get("type", "unknown")).lower()
    find_type = _text(find.get("type", "unknown")).lower()
    bs = _as_map(begin.get("spec") or {})
    fk = _as_map(find.get("spec") or {})
    fields: dict[str, Any] = {}
    if begin_type == "index":
        fields["index"] = int(bs["index"])
    elif begin_type == "keyword":
        fields["keyword"] = _bytes(bs["keyword"]).upper()
        fields["startfrom"] = int(bs["startfrom"])
    else:
        begin_type = "unknown"
    if find_type == "range":
        fields["lastkey"] = int(fk["lastkey"])
        fields["keystep"] = int(fk["keystep"])
        fields["limit"] = int(fk.get("limit", 0))
    elif find_type == "keynum":
        fields["keynumidx"] = int(fk["keynumidx"])
        fields["firstkey"] = int(fk["firstkey"])
        fields["keystep"] = int(fk["keystep"])
    else:
        find_type = "unknown"
    flags = frozenset(_text(f) for f in spec.get("flags", ()))
    return KeySpec(begin_search=begin_type, find_keys=find_type, flags=flags, **fields)


def _legacy_key_specs(first: int, last: int, step: int, flags: frozenset[str]) -> tuple[KeySpec, ...]:
    """A key spec from the pre-7.0 (first, last, step) triple, for servers without key specs."""
    if first <= 0:
        return ()
    lastkey = last - first if last >= 0 else last
    spec_flags = frozenset({"incomplete"}) if "movablekeys" in flags else frozenset()
    return (
        KeySpec(
            begin_search="index",
            find_keys="range",
            flags=spec_flags,
            index=first,
            lastkey=lastkey,
            keystep=max(step, 1),
        ),
    )


def _as_map(raw: Any) -> dict[str, Any]:
    if isinstance(raw, Mapping):
        return {_text(k): v for k, v in raw.items()}
    if isinstance(raw, list | tuple):
        return {_text(raw[i]): raw[i + 1] for i in range(0, len(raw) - 1, 2)}
    raise TypeError(f"expected a map or a flat key/value list, got {type(raw).__name__}")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes | bytearray) else str(value)


def _bytes(value: Any) -> bytes:
    return bytes(value) if isinstance(value, bytes | bytearray) else str(value).encode()
