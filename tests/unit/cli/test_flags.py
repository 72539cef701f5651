"""Library errors name library options; the CLI shows its flags instead (``cli/flags.py``)."""

import pytest

from edgequant.cli.flags import flag_names, with_flag_names
from edgequant.errors import ConfigError, NonFiniteError


def test_option_is_renamed_to_its_flag_and_the_type_is_kept():
    e = with_flag_names(ConfigError("outtype must be f32 or f16, got 'x'", option="outtype"))
    assert type(e) is ConfigError
    assert str(e) == "--outtype must be f32 or f16, got 'x'"
    assert e.option == "outtype"
    e = with_flag_names(NonFiniteError("use a tensor_types override 'w=f16'", option="tensor_types"))
    assert type(e) is NonFiniteError
    assert "--tensor-type override" in str(e)


def test_errors_without_a_known_option_pass_unchanged():
    plain = ConfigError("no option here")
    assert with_flag_names(plain) is plain
    unknown = ConfigError("threads=0", option="threads")
    assert with_flag_names(unknown) is unknown


def test_flag_names_reraises_renamed():
    with pytest.raises(ConfigError, match="set --allow-requantize to do it"), flag_names():
        raise ConfigError("disabled; set allow_requantize to do it anyway", option="allow_requantize")


def test_library_requantize_error_names_the_parameter(tmp_path):
    from edgequant.workflows.quantize import quantize_model
    from tests.support.tiny import write_tiny_llama

    src = str(tmp_path / "q.gguf")
    quantize_model(write_tiny_llama(str(tmp_path / "f32.gguf")), src, "Q4_0")
    with pytest.raises(ConfigError, match="set allow_requantize") as info:
        quantize_model(src, tmp_path / "out.gguf", "Q8_0")
    assert info.value.option == "allow_requantize"
    assert "--" not in str(info.value)


def test_only_whole_words_are_renamed_and_overrides_win():
    e = ConfigError("/data/n_ctx/x.txt: n_ctx must be an integer >= 4", option="n_ctx")
    assert str(with_flag_names(e)) == "/data/n_ctx/x.txt: --ctx must be an integer >= 4"
    assert str(with_flag_names(e, {"n_ctx": "--quality-ctx"})).endswith(
        "--quality-ctx must be an integer >= 4"
    )
    e = ConfigError("not written. Re-run with verify=False to keep it", option="verify=False")
    assert str(with_flag_names(e)) == "not written. Re-run with --no-verify to keep it"
