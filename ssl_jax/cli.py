"""The command line shared by every ssl_jax program: the `--config` flag, and mistakes in it or in any flag
reported as one line naming the argument and what would be right (status 2), instead of a traceback."""
import os

from ssl_jax import config_files
from ssl_jax import errors

def define_config_flag(help_text):
    """Defines `--config` (an ml_collections config file, locked) unless this process has it already:
    `ssl_jax.main` and `ssl_jax.bench` both take it, and one process (a test run) may import both."""
    from absl import flags
    from ml_collections import config_flags

    if "config" not in flags.FLAGS:
        config_flags.DEFINE_config_file("config", None, help_text, lock_config=True)


USAGE_ERROR_STATUS = 2  # a mistake on the command line or in the config (as absl's own usage errors)


def run_cli(main, user_errors=()):
    """`absl.app.run(main)` for every ssl_jax command: a mistake on the command line ends the process with ONE line
    on stderr and status 2, instead of a traceback.

    Covered while the flags are parsed: an unknown config key (`--config.modle.width=3`: names the key, the
    keys that exist there and the closest one), a value of the wrong type (names the key, its type and default),
    an unknown `:variant` or a missing config file (names the choices), and absl's own flag errors. Exceptions
    of the types in `user_errors` that `main` raises (e.g. `ValueError` for a setting the library rejects) are
    printed the same way, as `error: <message>`. Use it as `cli.run_cli(main, user_errors=(ValueError,))`
    in place of `app.run(main)`.
    """
    from absl import app

    def main_with_one_line_errors(argv):
        try:
            return main(argv)
        except user_errors as e:
            exit_with_error(e)

    app.run(main_with_one_line_errors, flags_parser=_parse_flags_one_line)


def exit_with_error(message, status=USAGE_ERROR_STATUS):
    """Prints `error: <message>` (an exception's text) to stderr and exits with `status`."""
    import sys

    print(f"error: {str(message).strip()}", file=sys.stderr, flush=True)
    sys.exit(status)


def _parse_flags_one_line(argv):
    from absl import flags

    try:
        return flags.FLAGS(argv)
    except Exception as e:  # noqa: BLE001 -- anything raised while parsing the flags is a command-line mistake
        exit_with_error(describe_flag_error(argv, e))


def describe_flag_error(argv, error):
    """One line saying which argument in `argv` was wrong and what would be right, for an `error` raised while
    absl parsed them: the config file and each `--config.key=value` are checked again to find the culprit."""
    config_arg, overrides = _config_arguments(argv)
    problem = config_problem(config_arg, overrides, error) if config_arg is not None else None
    return problem or errors.first_line(error).removeprefix("flag ")


def config_problem(config_arg, overrides, error=None):
    """What is wrong with `--config=config_arg` and its `(key, value)` overrides, in one line, or None."""
    path, has_variant, variant = config_arg.partition(":")
    if not os.path.isfile(path):
        folder = os.path.dirname(path) or "."
        known = sorted(f for f in os.listdir(folder) if f.endswith(".py")) if os.path.isdir(folder) else []
        return (f"--config={config_arg}: no such file {path!r}"
                + (f"; the config files in {folder}/ are: {', '.join(known)}" if known else ""))
    try:
        config = config_files.load_config_file(path, variant if has_variant else None)
    except Exception as e:  # noqa: BLE001 -- the config file's own message names the mistake
        return f"--config={config_arg}: {errors.first_line(e)}"
    for key, value in overrides:
        problem = override_problem(config, key, value, error)
        if problem:
            return problem
    return None


def override_problem(config, dotted_key, value, error=None, argument=None):
    """One line on why `config.<dotted_key> = value` is wrong (no such key: the keys there and the closest one;
    a value the key's type rejects, as the parse `error` says: that type and the default), or None.
    `argument` is how the line names the setting (default `--config.<dotted_key>=<value>`)."""
    import difflib

    import ml_collections

    argument = argument or f"--config.{dotted_key}={value}"
    node, path = config, "config"
    for part in dotted_key.split("."):
        if not isinstance(node, ml_collections.ConfigDict):
            return f"{argument}: {path} is a value of type {type(node).__name__} ({node!r}), not a group of keys."
        if part not in node:
            close = difflib.get_close_matches(part, list(node.keys()), n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            return f"{argument}: {path} has no key {part!r}{hint}; its keys are {', '.join(sorted(node.keys()))}."
        node, path = node[part], f"{path}.{part}"
    if error is None or path not in str(error):
        return None
    reason = errors.first_line(error).split(": ", 1)[-1]
    return f"{argument}: {reason}; {path} is of type {type(node).__name__} (default {node!r})."


def _config_arguments(argv, name="config"):
    """`--config`'s value and the `(key, value)` of each `--config.key=value` (or `--config.key value`) in argv."""
    config_arg, overrides = None, []
    args = list(argv[1:])
    for i, arg in enumerate(args):
        flag, has_value, value = arg.lstrip("-").partition("=")
        if not arg.startswith("-") or not (flag == name or flag.startswith(name + ".")):
            continue
        if not has_value:
            value = args[i + 1] if i + 1 < len(args) else ""
        if flag == name:
            config_arg = value
        else:
            overrides.append((flag[len(name) + 1:], value))
    return config_arg, overrides
