"""Tag parsing must give a clear outcome on any model text, and never raise."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssp_jax.agent.tags import (
    EMPTY,
    MISSING,
    OK,
    REASONS,
    UNCLOSED,
    TagResult,
    all_tags,
    count_tags,
    first_tag,
    last_tag,
    search_query,
)

TRAJECTORY = ("<think>I should look this up.</think><search> who built the Vantor bridge </search>\n"
              "<information>\nDoc 1 (Title: Vantor)\nThe bridge <answer>decoy</answer> was built by Ada.\n\n"
              "Doc 2 (Title: Ada)\nAda is an engineer.</information>\n\n"
              "<think>Now the founder.</think><search>Ada engineer company</search>\n"
              "<information>\nDoc 1 (Title: Acme)\nAcme was founded by Ada.</information>\n\n"
              "<think>Done.</think><answer> Ada Lovelace </answer>")


@pytest.mark.parametrize("text, last, first", [
    ("<answer>Paris</answer>", TagResult("Paris", OK), TagResult("Paris", OK)),
    ("<answer>  Paris \n</answer>", TagResult("Paris", OK), TagResult("Paris", OK)),
    ("no tags at all", TagResult(None, MISSING), TagResult(None, MISSING)),
    ("", TagResult(None, MISSING), TagResult(None, MISSING)),
    ("<answer>Paris", TagResult(None, UNCLOSED), TagResult(None, UNCLOSED)),
    ("</answer> then <answer>Paris", TagResult(None, UNCLOSED), TagResult(None, UNCLOSED)),
    ("Paris</answer>", TagResult(None, MISSING), TagResult(None, MISSING)),
    ("<answer> \n\t</answer>", TagResult(None, EMPTY), TagResult(None, EMPTY)),
    ("<answer></answer>", TagResult(None, EMPTY), TagResult(None, EMPTY)),
    # Nested and re-opened spans resolve to the innermost complete one.
    ("<answer><answer>x</answer></answer>", TagResult("x", OK), TagResult("x", OK)),
    ("<answer>draft <answer>final</answer>", TagResult("final", OK), TagResult("final", OK)),
    ("<answer>x</answer> junk </answer>", TagResult("x", OK), TagResult("x", OK)),
    # Repeated spans: last vs first; a blank last answer is EMPTY even after a good one.
    ("<answer>a</answer><answer>b</answer><answer>c</answer>", TagResult("c", OK), TagResult("a", OK)),
    ("<answer>a</answer><answer> </answer>", TagResult(None, EMPTY), TagResult("a", OK)),
    ("<answer>a</answer><answer>b", TagResult("a", OK), TagResult("a", OK)),
    # Case-sensitive, literal markers; near misses do not count.
    ("<Answer>x</Answer>", TagResult(None, MISSING), TagResult(None, MISSING)),
    ("<answer >x</answer >", TagResult(None, MISSING), TagResult(None, MISSING)),
    ("<ans<answer>x</answer>wer>", TagResult("x", OK), TagResult("x", OK)),
    # Garbage and unicode around and inside the span.
    ("\x00\x07\ufffd<answer>\x00 x\u200b</answer>\x1b[0m", TagResult("\x00 x\u200b", OK),
     TagResult("\x00 x\u200b", OK)),
    ("日本<answer>東京 🗼</answer>語", TagResult("東京 🗼", OK), TagResult("東京 🗼", OK)),
    ("<answer>\u3000\u00a0</answer>", TagResult(None, EMPTY), TagResult(None, EMPTY)),
    (TRAJECTORY, TagResult("Ada Lovelace", OK), TagResult("decoy", OK)),
])
def test_last_and_first_tag(text, last, first):
    assert last_tag(text, "answer") == last
    assert first_tag(text, "answer") == first


def test_first_question_of_proposer():
    text = "<think>chain</think><question> Who founded Acme? </question> <question>second</question>"
    assert first_tag(text, "question") == TagResult("Who founded Acme?", OK)
    assert first_tag("<question>unfinished", "question") == TagResult(None, UNCLOSED)


def test_count_tags():
    assert count_tags(TRAJECTORY, "answer") == (2, 2)
    assert count_tags("<answer>" * 11 + "x</answer>", "answer") == (11, 1)
    assert count_tags("<answer>x" + "</answer>" * 12, "answer") == (1, 12)
    assert count_tags("<answer<answer>>", "answer") == (1, 0)
    assert count_tags("no tags", "answer") == (0, 0)


@pytest.mark.parametrize("segment, expected", [
    ("<think>need info</think><search> capital of France </search>", TagResult("capital of France", OK)),
    ("<think>x</think><search>old</search>\n<information>\nDoc 1</information>\n\n<search>new</search>",
     TagResult("new", OK)),
    ("<search><search>inner</search>", TagResult("inner", OK)),
    ("<search>  </search>", TagResult(None, EMPTY)),
    ("I will search now</search>", TagResult(None, MISSING)),
    ("<search>never closed", TagResult(None, UNCLOSED)),
    ("<search>\x00日本\x7f</search>", TagResult("\x00日本\x7f", OK)),
])
def test_search_query(segment, expected):
    assert search_query(segment) == expected


def test_all_tags():
    assert all_tags(TRAJECTORY, "search") == ["who built the Vantor bridge", "Ada engineer company"]
    assert all_tags(TRAJECTORY, "answer") == ["decoy", "Ada Lovelace"]
    assert all_tags("<search>a</search><search> </search><search>a</search>", "search") == ["a", "a"]
    assert all_tags("<search>a<search>b</search>c</search><search>d", "search") == ["b"]
    assert all_tags("</search><search>x</search>", "search") == ["x"]
    assert all_tags("garbage", "search") == []


def test_bad_tag_name_is_a_caller_error():
    with pytest.raises(ValueError):
        last_tag("<a b>x</a b>", "a b")


TAGS = ("answer", "search", "question")
FRAGMENTS = ("<answer>", "</answer>", "<ans", "answer>", "</", "<", ">", "/", "<search>", "</search>",
             "<question>", "</question>", "\n<information>\n", "</information>\n\n", " ", "\n", "\x00")
text_pieces = st.lists(st.one_of(st.text(max_size=8), st.sampled_from(FRAGMENTS)), max_size=24)
garbage = st.one_of(st.text(), text_pieces.map("".join))


def _no_answer_tags(s: str) -> bool:
    return "<answer>" not in s and "</answer>" not in s


def _check(result: TagResult, text: str, tag: str) -> None:
    assert result.reason in REASONS
    assert result.ok == (result.reason == OK)
    if result.ok:
        assert result.content and result.content == result.content.strip()
        assert f"<{tag}>" in text and f"</{tag}>" in text and result.content in text
        assert f"<{tag}>" not in result.content and f"</{tag}>" not in result.content
    else:
        assert result.content is None
    assert (result.reason == MISSING) == (f"<{tag}>" not in text)


@settings(max_examples=400, deadline=None)
@given(text=garbage, tag=st.sampled_from(TAGS))
def test_properties_on_random_text(text, tag):
    last, first, spans = last_tag(text, tag), first_tag(text, tag), all_tags(text, tag)
    _check(last, text, tag)
    _check(first, text, tag)
    _check(search_query(text), text, "search")
    assert count_tags(text, tag) == (text.count(f"<{tag}>"), text.count(f"</{tag}>"))
    assert all(s and s == s.strip() and s in text for s in spans)
    # last/first are the final/initial complete spans, the same ones all_tags finds.
    assert last.ok <= bool(spans) and (not last.ok or last.content == spans[-1])
    assert not first.ok or first.content == spans[0]
    assert last.reason != UNCLOSED or not spans


content = st.text().filter(lambda t: "<" not in t and ">" not in t and t.strip())


@settings(max_examples=300, deadline=None)
@given(prefix=garbage, t=content, suffix=garbage.filter(_no_answer_tags))
def test_last_tag_round_trip(prefix, t, suffix):
    text = prefix + f"<answer>{t}</answer>" + suffix
    assert last_tag(text, "answer") == TagResult(t.strip(), OK)
    assert all_tags(text, "answer")[-1] == t.strip()


@settings(max_examples=300, deadline=None)
@given(prefix=garbage.filter(_no_answer_tags), t=content, suffix=garbage)
def test_first_tag_round_trip(prefix, t, suffix):
    text = prefix + f"<answer>{t}</answer>" + suffix
    assert first_tag(text, "answer") == TagResult(t.strip(), OK)
    assert all_tags(text, "answer")[0] == t.strip()
