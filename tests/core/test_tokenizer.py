"""Tokenizer: loading HF tokenizer directories, special tokens, chat templates, streaming decode."""

from __future__ import annotations

import json
import shutil

import pytest

from lazarus.errors import LazarusError
from lazarus.tokenizer import CHATML_TEMPLATE, Tokenizer, render_chat_template, train_tokenizer

MULTIBYTE_TEXT = "Grüße aus Köln — 東京 ☃ 🙂 naïve café, 12 + 7 = 19."

LLAMA2_TEMPLATE = (
    "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}"
    "{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}"
    "{% set system_message = false %}{% endif %}"
    "{% for message in loop_messages %}"
    "{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{% endif %}"
    "{% if loop.index0 == 0 and system_message != false %}"
    "{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}"
    "{% else %}{% set content = message['content'] %}{% endif %}"
    "{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + content.strip() + ' ' + eos_token }}{% endif %}"
    "{% endfor %}"
)

CONVERSATION = [
    {"role": "system", "content": "Be kind."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "What is 2 + 2?"},
]


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok")
    train_tokenizer(path, vocab_size=400)
    return path


def _copy_with_config(src, dst, **changes):
    """A copy of tokenizer dir ``src`` with tokenizer_config.json keys changed (None deletes)."""
    shutil.copytree(src, dst)
    config = json.loads((dst / "tokenizer_config.json").read_text())
    for key, value in changes.items():
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    (dst / "tokenizer_config.json").write_text(json.dumps(config))
    return dst


# -- chat templates --------------------------------------------------------------------------------
def test_chatml_template_renders_exactly(trained_dir):
    tok = Tokenizer.from_dir(trained_dir)
    text = tok.apply_chat_template(CONVERSATION, add_generation_prompt=True)
    assert text == ("<s><|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
                    "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n"
                    "<|im_start|>assistant\n")
    no_prompt = tok.apply_chat_template(CONVERSATION[:2], add_generation_prompt=False)
    assert no_prompt == "<s><|im_start|>system\nBe kind.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
    # the role markers are single special tokens and BOS is not added a second time
    ids = tok.encode_chat(CONVERSATION[:2])
    im_start = tok.token_to_id("<|im_start|>")
    assert ids[0] == tok.bos_token_id and ids[1] == im_start
    assert ids.count(tok.bos_token_id) == 1
    assert ids.count(im_start) == 3


def test_llama2_template_renders_exactly_and_rejects_bad_role_order(tmp_path, trained_dir):
    tok = Tokenizer.from_dir(_copy_with_config(trained_dir, tmp_path / "t", chat_template=LLAMA2_TEMPLATE))
    text = tok.apply_chat_template(CONVERSATION)
    assert text == ("<s>[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST] Hello! </s>"
                    "<s>[INST] What is 2 + 2? [/INST]")
    with pytest.raises(LazarusError, match="roles must alternate"):
        tok.apply_chat_template([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}])


def test_template_conventions_match_transformers(trained_dir):
    """trim_blocks/lstrip_blocks, tojson, tools and extra variables render as transformers does."""
    transformers = pytest.importorskip("transformers")
    template = (
        "{% for message in messages %}\n"
        "    {% if message.role == 'system' %}\n"
        "SYS: {{ message.content | tojson }}\n"
        "    {% else %}\n"
        "{{ message.role | upper }}: {{ message.content }}\n"
        "    {% endif %}\n"
        "{% endfor %}\n"
        "{% if tools %}TOOLS: {{ tools | tojson(indent=1) }}\n{% endif %}"
        "{% if enable_thinking is defined and not enable_thinking %}<no-think>{% endif %}"
        "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
    )
    tools = [{"type": "function", "function": {"name": "add", "description": "añadir <a> & b"}}]
    messages = [{"role": "system", "content": "Ünïcode \"quoted\" <tag>"}, {"role": "user", "content": "Hi"}]
    ours = render_chat_template(template, messages, add_generation_prompt=True, tools=tools,
                                enable_thinking=False)
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=str(trained_dir / "tokenizer.json"))
    theirs = hf.apply_chat_template(messages, chat_template=template, tools=tools, tokenize=False,
                                    add_generation_prompt=True, enable_thinking=False)
    assert ours == theirs
    assert 'SYS: "Ünïcode \\"quoted\\" <tag>"\nUSER: Hi\nTOOLS:' in ours


def test_generation_block_tag_renders_its_body():
    template = ("{% for m in messages %}{% if m.role == 'assistant' %}{% generation %}A: {{ m.content }}"
                "{% endgeneration %}{% else %}U: {{ m.content }}{% endif %}{{ '\\n' }}{% endfor %}")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]
    assert render_chat_template(template, messages) == "U: hi\nA: hello\n"


def test_named_templates_and_strftime(tmp_path, trained_dir):
    templates = [{"name": "default", "template": "D{{ messages[0].content }}"},
                 {"name": "tool_use", "template": "T{{ tools | length }}{{ strftime_now('%Y') | length }}"}]
    tok = Tokenizer.from_dir(_copy_with_config(trained_dir, tmp_path / "t", chat_template=templates))
    assert tok.apply_chat_template([{"role": "user", "content": "x"}]) == "Dx"
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tools=[{"a": 1}]) == "T14"
    with pytest.raises(LazarusError, match="no chat template named 'rag'"):
        tok.apply_chat_template([{"role": "user", "content": "x"}], template_name="rag")


def test_missing_template_is_a_clear_error(tmp_path, trained_dir):
    tok = Tokenizer.from_dir(_copy_with_config(trained_dir, tmp_path / "t", chat_template=None))
    assert tok.chat_template is None
    with pytest.raises(LazarusError, match="no chat template"):
        tok.apply_chat_template([{"role": "user", "content": "hi"}])


def test_template_syntax_error_is_a_lazarus_error():
    with pytest.raises(LazarusError, match="syntax error"):
        render_chat_template("{% for m in messages %}", [])


def test_sandbox_blocks_attribute_escape():
    with pytest.raises(LazarusError):
        render_chat_template("{{ messages.__class__.__mro__[1].__subclasses__() }}", [])


# -- special tokens and raw mode ---------------------------------------------------------------------
def test_raw_mode_adds_nothing(trained_dir):
    tok = Tokenizer.from_dir(trained_dir)
    text = "What is 12 + 7? 19"
    bare = tok.backend.encode(text, add_special_tokens=False).ids
    assert tok.encode(text, add_special_tokens=False) == bare
    assert tok.bos_token_id not in bare
    assert tok.encode(text) == [tok.bos_token_id, *bare]


def test_bos_eos_from_both_config_files(tmp_path, trained_dir):
    # bos/eos given as AddedToken dicts; generation_config lists two EOS ids; add_bos_token off
    path = _copy_with_config(trained_dir, tmp_path / "t",
                             bos_token={"__type": "AddedToken", "content": "<s>", "special": True},
                             eos_token={"content": "<|im_end|>"}, add_bos_token=False)
    (path / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": [2, 5]}))
    (path / "special_tokens_map.json").unlink()
    tok = Tokenizer.from_dir(path)
    assert tok.bos_token_id == 1 and tok.bos_token == "<s>"
    assert tok.eos_token_ids == {2, 5}
    assert tok.eos_token_id == tok.token_to_id("<|im_end|>") == 5
    assert tok.pad_token_id == tok.token_to_id("<pad>")
    assert tok.add_bos_token is False
    # add_bos_token=false wins over tokenizer.json's post-processor
    assert tok.encode("hello") == tok.encode("hello", add_special_tokens=False)

    # an int eos_token_id in generation_config.json and no special tokens in tokenizer_config.json
    path2 = _copy_with_config(trained_dir, tmp_path / "t2", bos_token=None, eos_token=None,
                              add_bos_token=None)
    (path2 / "special_tokens_map.json").unlink()
    (path2 / "generation_config.json").write_text(json.dumps({"bos_token_id": 1, "eos_token_id": 2}))
    tok2 = Tokenizer.from_dir(path2)
    assert tok2.eos_token_ids == {2} and tok2.bos_token_id == 1
    assert tok2.encode("hello")[0] == 1  # the post-processor's BOS is kept


def test_add_bos_token_true_without_post_processor(tmp_path, trained_dir):
    path = tmp_path / "t"
    shutil.copytree(trained_dir, path)
    data = json.loads((path / "tokenizer.json").read_text())
    data["post_processor"] = None
    (path / "tokenizer.json").write_text(json.dumps(data))
    tok = Tokenizer.from_dir(path)
    assert tok.encode("hello")[0] == tok.bos_token_id
    assert tok.encode("hello")[1:] == tok.encode("hello", add_special_tokens=False)


def test_added_tokens_decoder_tokens_are_registered(tmp_path, trained_dir):
    config = json.loads((trained_dir / "tokenizer_config.json").read_text())
    added = dict(config["added_tokens_decoder"])
    added["400"] = {"content": "<|tool|>", "special": True}
    tok = Tokenizer.from_dir(_copy_with_config(trained_dir, tmp_path / "t", added_tokens_decoder=added))
    tool_id = tok.token_to_id("<|tool|>")
    assert tool_id is not None
    assert tool_id in tok.encode("a <|tool|> b", add_special_tokens=False)


def test_bad_files_raise_lazarus_errors(tmp_path, trained_dir):
    with pytest.raises(LazarusError, match="no tokenizer.json"):
        Tokenizer.from_dir(tmp_path)
    path = tmp_path / "t"
    shutil.copytree(trained_dir, path)
    (path / "tokenizer_config.json").write_text('{"bos_token": "<s>",\n oops}')
    with pytest.raises(LazarusError, match=r"tokenizer_config.json: not valid JSON \(line 2\)"):
        Tokenizer.from_dir(path)


# -- streaming detokenisation ------------------------------------------------------------------------
def _stream(tok, ids):
    detok = tok.detokenizer()
    pieces = [detok.add(i) for i in ids]
    pieces.append(detok.finish())
    return pieces


def test_streaming_equals_full_decode_byte_level(trained_dir):
    tok = Tokenizer.from_dir(trained_dir)
    ids = tok.encode(MULTIBYTE_TEXT, add_special_tokens=False)
    assert len(ids) > len(MULTIBYTE_TEXT) // 2  # many characters span several byte tokens
    pieces = _stream(tok, ids)
    assert "".join(pieces) == tok.decode(ids) == MULTIBYTE_TEXT
    assert all("\ufffd" not in p for p in pieces)
    # text arrives as it is generated, not all at the end
    assert sum(1 for p in pieces if p) > 10


def _sentencepiece_style_tokenizer(path):
    """A Llama-2-like tokenizer: Metaspace "▁" words, byte fallback for unseen characters."""
    from tokenizers import Tokenizer as Backend
    from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

    byte_tokens = [f"<0x{i:02X}>" for i in range(256)]
    backend = Backend(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never", split=False)
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                        decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"],
                                  limit_alphabet=40, show_progress=False)
    backend.train_from_iterator(["the cat sat on the mat", "hello world, hello there",
                                 "numbers like 12 and 7 and 19"] * 5, trainer=trainer)
    # byte tokens are ordinary vocabulary entries (as in Llama-2), not special tokens
    data = json.loads(backend.to_str())
    vocab = data["model"]["vocab"]
    for token in byte_tokens:
        vocab.setdefault(token, len(vocab))
    path.mkdir()
    (path / "tokenizer.json").write_text(json.dumps(data))
    (path / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>", "eos_token": "</s>",
                                                            "add_bos_token": True}))
    return Tokenizer.from_dir(path)


def test_streaming_equals_full_decode_sentencepiece_style(tmp_path):
    tok = _sentencepiece_style_tokenizer(tmp_path / "sp")
    text = "hello world the cat Köln ☃ 🙂 sat  on 19"
    ids = tok.encode(text)
    assert ids[0] == tok.bos_token_id
    assert tok.token_to_id("<0xE2>") in ids  # byte fallback is exercised
    full = tok.decode(ids)
    assert full == text
    pieces = _stream(tok, ids)
    assert "".join(pieces) == full
    assert all("\ufffd" not in p for p in pieces)
    # spaces between words survive streaming (SentencePiece drops a leading "▁" per decode call)
    assert " world" in pieces or any(p.startswith(" ") for p in pieces)


def test_streaming_truncated_character_is_released_at_finish(trained_dir):
    tok = Tokenizer.from_dir(trained_dir)
    ids = tok.encode("ok 🙂", add_special_tokens=False)
    detok = tok.detokenizer()
    out = "".join(detok.add(i) for i in ids[:-1])
    assert "\ufffd" not in out  # the half emoji is held back...
    assert out + detok.finish() == tok.decode(ids[:-1])  # ...and released (as U+FFFD) at the end


# -- the trained tokenizer -----------------------------------------------------------------------------
def test_trained_tokenizer_round_trips_and_has_its_specials(trained_dir):
    tok = Tokenizer.from_dir(trained_dir)
    assert tok.vocab_size == 400
    assert [tok.token_to_id(t) for t in ("<unk>", "<s>", "</s>", "<pad>")] == [0, 1, 2, 3]
    assert tok.bos_token_id == 1 and tok.eos_token_ids == {2} and tok.pad_token_id == 3
    assert tok.chat_template == CHATML_TEMPLATE
    for text in ["What is 12 + 7? 19", MULTIBYTE_TEXT, "  leading and trailing  ", "line\nbreak\ttab"]:
        assert tok.decode(tok.encode(text)) == text
    # it learned merges from the embedded corpus: common words are short
    assert len(tok.encode(" the", add_special_tokens=False)) == 1
    files = {p.name for p in trained_dir.iterdir()}
    assert {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"} <= files


def test_trained_tokenizer_loads_in_transformers(trained_dir):
    transformers = pytest.importorskip("transformers")
    hf = transformers.AutoTokenizer.from_pretrained(str(trained_dir))
    tok = Tokenizer.from_dir(trained_dir)
    # "<s>" written in the text is the text's own token: the tokenizer adds its BOS before it, as HF does
    for text in ["What is 12 + 7? 19", MULTIBYTE_TEXT, "<s>Hello", "Hello</s>", ""]:
        assert hf.encode(text) == tok.encode(text)
        assert hf.encode(text, add_special_tokens=False) == tok.encode(text, add_special_tokens=False)
    assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id) == (1, 2, 3)
    hf_chat = hf.apply_chat_template(CONVERSATION, tokenize=False, add_generation_prompt=True)
    assert hf_chat == tok.apply_chat_template(CONVERSATION)


def test_trained_vocab_size_is_exact(tmp_path):
    """A corpus too small for the asked vocabulary is topped up, so every model id decodes."""
    tok = train_tokenizer(tmp_path / "big", vocab_size=2048)
    assert tok.vocab_size == 2048
    assert tok.decode([2047]) == tok.id_to_token(2047) and tok.id_to_token(2047).startswith("<reserved_")
    assert tok.decode(tok.encode("What is 12 + 7? 19")) == "What is 12 + 7? 19"
    transformers = pytest.importorskip("transformers")
    assert len(transformers.AutoTokenizer.from_pretrained(str(tmp_path / "big"))) == 2048


def test_train_tokenizer_custom_corpus_and_bad_sizes(tmp_path):
    tok = train_tokenizer(tmp_path / "a", vocab_size=300, corpus=["abc abc abc", "abd abd"] * 10)
    assert tok.decode(tok.encode("abc abd")) == "abc abd"
    with pytest.raises(LazarusError, match="vocab_size must be at least"):
        train_tokenizer(tmp_path / "b", vocab_size=100)
    with pytest.raises(LazarusError, match="corpus is empty"):
        train_tokenizer(tmp_path / "c", corpus=["", "  "])
