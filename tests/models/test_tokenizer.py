"""The generated CLIP tokenizer: every listed word is one token; other text still tokenizes."""

from tunelab.models.tokenizer import DEFAULT_WORDS, build_clip_tokenizer


def test_every_listed_word_is_one_token_and_other_text_falls_back_to_pieces():
    tokenizer = build_clip_tokenizer()
    split = [word for word in DEFAULT_WORDS if len(tokenizer(word, add_special_tokens=False).input_ids) != 1]
    assert split == []  # e.g. "white" must not lose to "high"'s merge of "hi"
    pieces = tokenizer("zebra", add_special_tokens=False).input_ids
    assert len(pieces) > 1 and tokenizer.decode(pieces) == "zebra"


def test_the_build_is_deterministic():
    first, second = build_clip_tokenizer(["white", "high", "while"]), build_clip_tokenizer(["while", "high", "white"])
    assert first.get_vocab() == second.get_vocab()
    assert first("white while high").input_ids == second("white while high").input_ids
