"""ftypes (``gguf/ftypes.py``): names, ids and aliases parsed once; unsupported and unknown ones refused."""

import pytest

from edgequant.errors import ConfigError, UnsupportedTypeError
from edgequant.gguf.ftypes import parse_ftype


def test_parse_ftype_names_ids_aliases_and_errors():
    assert parse_ftype("q4_k") == ("Q4_K_M", 15)
    assert parse_ftype("15") == ("Q4_K_M", 15)
    assert parse_ftype("iq4_xs") == ("IQ4_XS", 30)
    with pytest.raises(UnsupportedTypeError, match="IQ1/IQ2/IQ3"):
        parse_ftype("IQ2_XXS")
    with pytest.raises(ConfigError, match="unknown ftype 'Q9_K'"):
        parse_ftype("Q9_K")
