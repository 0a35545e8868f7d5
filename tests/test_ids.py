"""Ids (``multimsg/ids.py``): 16 letters and digits, each random byte mapped without bias."""

from __future__ import annotations

import os
import string

from multimsg import ids

ALPHABET = string.ascii_letters + string.digits


def test_new_ids_are_sixteen_letters_and_digits_and_differ():
    made = {ids.new_id() for _ in range(2000)}
    assert len(made) == 2000
    assert all(ids.is_id(i) and len(i) == 16 and set(i) <= set(ALPHABET) for i in made)


def test_each_random_byte_below_the_bias_cut_is_its_letter_and_the_others_are_dropped():
    cut = 256 - 256 % len(ALPHABET)
    for _ in range(500):
        raw = os.urandom(64)
        expected = "".join(ALPHABET[b % len(ALPHABET)] for b in raw if b < cut)
        assert raw.translate(ids._LETTER_OF, ids._BIASED).decode() == expected
