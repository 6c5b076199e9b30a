"""Email templates: shipped files, locale fallback, the sandbox, error locations and caching."""

from __future__ import annotations

import pickle
import re
import shutil
from collections import Counter
from pathlib import Path
from typing import Any

import jinja2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mailstream.exceptions import MailstreamError
from mailstream.workflows.digest import template_view
from mailstream.workflows.template_files import TemplateError
from mailstream.workflows.templates import DEFAULT_TEMPLATE_DIR, Rendered, Templates

USER = {"email": "a@example.com"}
ITEMS = [{"name": "Mug", "qty": 2, "price": "12.50"}, {"name": "Tea", "qty": 1}]


def write(directory: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = directory / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return directory


def simple(subject: str = "Hi", text: str = "Hello", html: str = "<p>Hello</p>") -> str:
    """A template with the three blocks, one per line: subject on 1, text on 2, html on 3."""
    return (
        f"{{% block subject %}}{subject}{{% endblock %}}\n"
        f"{{% block text %}}{text}{{% endblock %}}\n"
        f"{{% block html %}}{html}{{% endblock %}}\n"
    )


def with_text_on_line_3(expression: str) -> str:
    return (
        "{% block subject %}Hi{% endblock %}\n"
        "{% block text %}\n"
        f"{expression}\n"
        "{% endblock %}\n"
        "{% block html %}<p>x</p>{% endblock %}\n"
    )


def render_error(templates: Templates, name: str = "t", **kwargs: Any) -> TemplateError:
    kwargs.setdefault("user", USER)
    with pytest.raises(TemplateError) as info:
        templates.render(name, **kwargs)
    return info.value


# --- the shipped templates --------------------------------------------------------------


SHIPPED = [
    pytest.param("welcome", {}, "Welcome!", id="welcome"),
    pytest.param("tips", {}, "3 tips to get started", id="tips"),
    pytest.param(
        "cart_reminder",
        {"context": {"items": ITEMS}},
        "You left something in your cart",
        id="cart_reminder",
    ),
    pytest.param(
        "cart_reminder_discount",
        {"context": {"items": ITEMS}},
        "Your cart is still waiting",
        id="cart_reminder_discount",
    ),
    pytest.param(
        "order_receipt",
        {"event": {"order_id": "A-1001", "total": "24.50"}},
        "Your receipt for order A-1001",
        id="order_receipt",
    ),
    pytest.param("reengagement", {}, "We miss you", id="reengagement"),
    pytest.param(
        "comments_digest",
        {"event": template_view([["c1", "comment_added", 1_700_000_000_000, {}]])},
        "1 new comment",
        id="comments_digest",
    ),
]


def test_the_shipped_directory_is_the_default_and_checks_clean() -> None:
    templates = Templates(DEFAULT_TEMPLATE_DIR)

    shipped = Path(__file__).resolve().parents[2] / "mailstream" / "email_templates"
    assert DEFAULT_TEMPLATE_DIR == shipped
    assert templates.check() == []
    assert templates.names() == [
        "cart_reminder",
        "cart_reminder_discount",
        "comments_digest",
        "order_receipt",
        "reengagement",
        "tips",
        "welcome",
    ]


@pytest.mark.parametrize(("name", "data", "subject"), SHIPPED)
def test_each_shipped_template_renders_with_minimal_data(
    name: str, data: dict[str, Any], subject: str
) -> None:
    rendered = Templates(DEFAULT_TEMPLATE_DIR).render(name, user=USER, **data)

    assert rendered.subject == subject
    assert rendered.template == name
    assert rendered.locale is None
    assert re.fullmatch(r"[0-9a-f]{12}", rendered.version)
    assert rendered.text.startswith("Hi there,")
    assert "{{" not in rendered.text and "{%" not in rendered.text
    assert rendered.html.startswith("<!DOCTYPE html>")
    assert rendered.html.endswith("</html>")


@pytest.mark.parametrize(
    ("name", "data", "in_text", "in_html"),
    [
        pytest.param(
            "welcome",
            {"context": {"app_url": "https://app.example.com/?a=1&b=2"}},
            ["Hi Ada,", "https://app.example.com/?a=1&b=2"],
            ['href="https://app.example.com/?a=1&amp;b=2"'],
            id="welcome-link",
        ),
        pytest.param(
            "cart_reminder",
            {"context": {"items": ITEMS, "cart_url": "https://shop.example.com/cart"}},
            ["  - 2 x Mug (12.50)\n  - 1 x Tea", "https://shop.example.com/cart"],
            [">Mug</td>", "&times; 2", "Return to your cart"],
            id="cart-items",
        ),
        pytest.param(
            "cart_reminder_discount",
            {"context": {"items": ITEMS, "discount_code": "SAVE10"}},
            ["SAVE10", "  - 1 x Tea"],
            ["SAVE10", ">Tea</td>"],
            id="discount-code",
        ),
        pytest.param(
            "order_receipt",
            {"event": {"order_id": "A-1", "total": "24.50", "currency": "EUR", "items": ITEMS}},
            ["Order: A-1", "Total: 24.50 EUR", "  - 2 x Mug (12.50)"],
            ["<strong>A-1</strong>", "24.50 EUR"],
            id="receipt-items",
        ),
        pytest.param(
            "reengagement",
            {"context": {"unsubscribe_url": "https://x.example.com/u"}},
            ["Hi Ada,", "Unsubscribe: https://x.example.com/u"],
            ['href="https://x.example.com/u"'],
            id="unsubscribe-link",
        ),
    ],
)
def test_shipped_templates_use_the_data_they_are_given(
    name: str, data: dict[str, Any], in_text: list[str], in_html: list[str]
) -> None:
    rendered = Templates(DEFAULT_TEMPLATE_DIR).render(
        name, user={**USER, "first_name": "Ada"}, **data
    )

    for fragment in in_text:
        assert fragment in rendered.text
    for fragment in in_html:
        assert fragment in rendered.html


@pytest.mark.parametrize(
    ("name", "data"),
    [
        pytest.param("cart_reminder", {"context": {"items": []}}, id="cart-empty"),
        pytest.param("cart_reminder", {"context": {"items": [{}]}}, id="cart-item-without-fields"),
        pytest.param("cart_reminder", {"context": {}}, id="cart-no-items"),
        pytest.param("cart_reminder_discount", {"context": {"discount_code": ""}}, id="empty-code"),
        pytest.param("order_receipt", {"event": {"order_id": 7, "total": 0}}, id="numbers"),
        pytest.param("welcome", {"event": {}, "context": {}}, id="welcome-empty"),
    ],
)
def test_missing_optional_data_does_not_break_shipped_templates(
    name: str, data: dict[str, Any]
) -> None:
    rendered = Templates(DEFAULT_TEMPLATE_DIR).render(
        name, user={"email": "a@example.com", "first_name": None}, **data
    )

    assert rendered.subject
    assert "None" not in rendered.text


def test_the_french_welcome_is_used_for_french_canadians() -> None:
    rendered = Templates(DEFAULT_TEMPLATE_DIR).render(
        "welcome", user={**USER, "first_name": "Zoé"}, locale="fr-CA"
    )

    assert rendered.locale == "fr"
    assert rendered.subject == "Bienvenue, Zoé !"
    assert rendered.text.startswith("Bonjour Zoé,")
    assert '<html lang="fr">' in rendered.html


# --- versions -------------------------------------------------------------------------


@pytest.fixture
def shipped_copy(tmp_path: Path) -> Path:
    return Path(shutil.copytree(DEFAULT_TEMPLATE_DIR, tmp_path / "templates"))


@pytest.mark.parametrize(
    ("edited", "changes"),
    [
        pytest.param("welcome.j2", True, id="the-template"),
        pytest.param("_layout.j2", True, id="its-layout"),
        pytest.param("_macros.j2", True, id="a-partial-it-imports"),
        pytest.param("welcome.fr.j2", False, id="a-locale-variant-not-used"),
        pytest.param("tips.j2", False, id="another-template"),
    ],
)
def test_the_version_follows_the_files_a_template_is_made_of(
    shipped_copy: Path, edited: str, changes: bool
) -> None:
    before = Templates(shipped_copy).render("welcome", user=USER).version
    again = Templates(shipped_copy).render("welcome", user=USER).version
    path = shipped_copy / edited
    path.write_text(path.read_text(encoding="utf-8") + "\n{# edited #}\n", encoding="utf-8")

    after = Templates(shipped_copy).render("welcome", user=USER).version

    assert again == before
    assert (after != before) is changes


def test_each_locale_variant_has_its_own_version() -> None:
    templates = Templates(DEFAULT_TEMPLATE_DIR)

    default = templates.render("welcome", user=USER).version
    french = templates.render("welcome", user=USER, locale="fr").version

    assert default != french


def test_a_template_naming_its_include_at_render_time_is_versioned_on_every_file(
    tmp_path: Path,
) -> None:
    write(
        tmp_path,
        {
            "t.j2": simple(text='{% include "_" ~ user.kind ~ ".j2" %}'),
            "_a.j2": "A",
            "other.j2": simple(),
        },
    )
    before = Templates(tmp_path).render("t", user={"kind": "a"})
    write(tmp_path, {"other.j2": simple(subject="changed")})

    after = Templates(tmp_path).render("t", user={"kind": "a"})

    assert before.text == after.text == "A"
    assert before.version != after.version


# --- locales --------------------------------------------------------------------------


LOCALE_FILES = {
    "welcome.j2": simple(subject="default"),
    "welcome.fr.j2": simple(subject="fr"),
    "welcome.fr-CA.j2": simple(subject="fr-CA"),
    "welcome.pt-BR.j2": simple(subject="pt-BR"),
}


@pytest.mark.parametrize(
    ("asked", "subject", "locale"),
    [
        pytest.param("fr-CA", "fr-CA", "fr-CA", id="exact-region"),
        pytest.param("fr-BE", "fr", "fr", id="region-falls-back-to-language"),
        pytest.param("fr", "fr", "fr", id="language"),
        pytest.param("fr_ca", "fr-CA", "fr-CA", id="underscore-and-case"),
        pytest.param("FR-ca", "fr-CA", "fr-CA", id="upper-language"),
        pytest.param("pt", "default", None, id="only-a-regional-variant"),
        pytest.param("de-DE", "default", None, id="no-variant"),
        pytest.param(None, "default", None, id="no-locale"),
        pytest.param("", "default", None, id="empty-locale"),
        pytest.param("../../etc/passwd", "default", None, id="hostile-locale"),
    ],
)
def test_locale_fallback(
    tmp_path: Path, asked: str | None, subject: str, locale: str | None
) -> None:
    templates = Templates(write(tmp_path, LOCALE_FILES))

    rendered = templates.render("welcome", user=USER, locale=asked)

    assert (rendered.subject, rendered.locale) == (subject, locale)
    assert templates.names() == ["welcome"]


def test_the_template_sees_the_locale_asked_for(tmp_path: Path) -> None:
    write(tmp_path, {"t.j2": simple(), "t.fr.j2": simple(subject="{{ locale }}")})

    assert Templates(tmp_path).render("t", user=USER, locale="fr-CA").subject == "fr-CA"


def test_a_template_with_only_locale_variants(tmp_path: Path) -> None:
    templates = Templates(write(tmp_path, {"promo.fr.j2": simple(subject="fr")}))

    assert templates.render("promo", user=USER, locale="fr").subject == "fr"
    error = render_error(templates, "promo", locale="de")
    assert "no promo.j2 and no variant for locale 'de'" in str(error)
    assert [str(e) for e in templates.check()] == [
        "template 'promo': has locale variants (promo.fr.j2) but no promo.j2"
    ]


# --- hostile templates and hostile data -----------------------------------------------


@pytest.mark.parametrize(
    "expression",
    [
        pytest.param("{{ ''.__class__.__mro__ }}", id="str-class-mro"),
        pytest.param("{{ user.__class__.__init__.__globals__ }}", id="user-class-globals"),
        pytest.param("{{ cycler.__init__.__globals__ }}", id="global-function-globals"),
        pytest.param("{{ user.update({'email': 'x'}) }}", id="mutating-method"),
        pytest.param("{{ context.setdefault('x', 1) }}", id="mutating-missing-key-method"),
        pytest.param("{{ '{0.__class__}'.format(user) }}", id="format-string"),
        pytest.param("{{ 2 ** (10 ** 10) }}", id="huge-power"),
        pytest.param("{{ 'x' * 10 ** 9 }}", id="huge-string"),
    ],
)
def test_the_sandbox_blocks_unsafe_access(tmp_path: Path, expression: str) -> None:
    templates = Templates(write(tmp_path, {"t.j2": with_text_on_line_3(expression)}))

    assert templates.check() == []  # compiles (and does not hang folding constants)
    error = render_error(templates)

    assert error.template == "t"
    assert error.line == 3
    assert error.reason.startswith("unsafe access blocked by the sandbox: ")
    assert isinstance(error, MailstreamError)


def test_a_script_in_a_trait_is_escaped_in_html_and_literal_in_text(tmp_path: Path) -> None:
    script = "<script>alert(1)</script>"
    write(
        tmp_path,
        {"t.j2": simple("Hi {{ user.name }}", "Hi {{ user.name }}", "<p>{{ user.name }}</p>")},
    )

    rendered = Templates(tmp_path).render("t", user={"name": script})

    assert rendered.html == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"
    assert rendered.text == f"Hi {script}"
    assert rendered.subject == f"Hi {script}"


def test_html_from_the_layout_and_macros_is_not_escaped(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "_m.j2": "{% macro b(x) %}<b>{{ x }}</b>{% endmacro %}",
            "t.j2": simple(html='{% from "_m.j2" import b %}{{ b(user.name) }}'),
        },
    )

    assert Templates(tmp_path).render("t", user={"name": "<i>"}).html == "<b>&lt;i&gt;</b>"


@pytest.mark.parametrize(
    ("name", "subject"),
    [
        pytest.param("Hi\r\nBcc: evil@example.com", None, id="crlf-header-injection"),
        pytest.param("Hi\nthere", None, id="lf"),
        pytest.param("Hi\rthere", None, id="cr"),
        pytest.param("Hi\u2028there", None, id="unicode-line-separator"),
        pytest.param("Ada\n", "Hi Ada", id="trailing-newline-is-stripped"),
        pytest.param("  Ada  ", "Hi   Ada", id="surrounding-space-stripped"),
    ],
)
def test_a_subject_cannot_carry_a_line_break(
    tmp_path: Path, name: str, subject: str | None
) -> None:
    templates = Templates(write(tmp_path, {"t.j2": simple(subject="Hi {{ user.name }}")}))

    if subject is not None:
        assert templates.render("t", user={"name": name}).subject == subject
        return
    error = render_error(templates, user={"name": name})
    assert "the subject would contain a line break" in error.reason
    assert str(error).startswith("template 't': ")


def test_an_empty_subject_is_an_error(tmp_path: Path) -> None:
    templates = Templates(write(tmp_path, {"t.j2": simple(subject="{{ user.name }}")}))

    error = render_error(templates, user={"name": "  "})

    assert error.reason == "the subject is empty after rendering"


# --- errors name the template, the line and the reason --------------------------------


def test_a_missing_variable_names_its_line(tmp_path: Path) -> None:
    source = simple(subject="Your cart").replace("Hello", "Hello\n" * 10 + "{{ items }}")
    templates = Templates(write(tmp_path, {"cart_reminder.j2": source}))

    error = render_error(templates, "cart_reminder")

    assert str(error) == "template 'cart_reminder' line 12: 'items' is undefined"
    assert (error.template, error.line, error.reason) == (
        "cart_reminder",
        12,
        "'items' is undefined",
    )


@pytest.mark.parametrize(
    ("files", "message"),
    [
        pytest.param(
            {"t.j2": simple(text="{{ user.nickname }}")},
            "template 't' line 2: 'dict object' has no attribute 'nickname'",
            id="missing-key",
        ),
        pytest.param(
            {"t.j2": simple(text="{% if context.flag %}x{% endif %}")},
            "template 't' line 2: 'dict object' has no attribute 'flag'",
            id="missing-key-in-a-test",
        ),
        pytest.param(
            {
                "_layout.j2": simple(text="\n\n{{ footer }}"),
                "t.j2": '{% extends "_layout.j2" %}',
            },
            "template 't' line 4 of _layout.j2: 'footer' is undefined",
            id="in-the-layout",
        ),
        pytest.param(
            {"t.j2": simple(), "t.fr.j2": "\n" + simple(text="{{ nope }}")},
            "template 't' line 3 of t.fr.j2: 'nope' is undefined",
            id="in-a-locale-variant",
        ),
        pytest.param(
            {"t.j2": simple(text="{{ 1 // 0 }}")},
            "template 't' line 2: ZeroDivisionError while rendering: integer division or modulo"
            " by zero",
            id="division-by-zero",
        ),
        pytest.param(
            {"t.j2": simple(text="{{ 'abc' | round }}")},
            "template 't' line 2: TypeError while rendering: ",
            id="filter-error",
        ),
        pytest.param(
            {"t.j2": simple(text="{{ range(10 ** 6) | length }}")},
            "template 't' line 2: OverflowError while rendering: ",
            id="range-too-big",
        ),
        pytest.param(
            {"t.j2": simple(text='{% include "_" ~ user.email ~ ".j2" %}')},
            "template 't' line 2: '_a@example.com.j2' is not in ",
            id="missing-dynamic-include",
        ),
    ],
)
def test_render_errors_name_template_line_and_reason(
    tmp_path: Path, files: dict[str, str], message: str
) -> None:
    templates = Templates(write(tmp_path, files))

    error = render_error(templates, locale="fr")

    assert str(error).startswith(message)


def test_a_syntax_error_is_reported_by_check_while_other_templates_render(tmp_path: Path) -> None:
    broken = simple(text="Hello\n\n{% if user.vip %}VIP\n")  # the if is never closed
    templates = Templates(write(tmp_path, {"good.j2": simple(), "broken.j2": broken}))

    errors = templates.check()

    assert len(errors) == 1
    assert errors[0].template == "broken"
    assert errors[0].line == 5
    assert errors[0].reason.startswith("syntax error: ")
    assert str(errors[0]).startswith("template 'broken' line 5: syntax error: ")
    assert templates.render("good", user=USER).subject == "Hi"
    assert templates.names() == ["broken", "good"]
    assert str(render_error(templates, "broken")) == str(errors[0])


@pytest.mark.parametrize(
    ("files", "messages"),
    [
        pytest.param(
            {"t.j2": simple(text="{{ x | shout }}")},
            ["template 't' line 2: No filter named 'shout'."],
            id="unknown-filter",
        ),
        pytest.param(
            {"t.j2": '\n{% extends "_layot.j2" %}'},
            ["template 't' line 2: extends '_layot.j2', which is not in "],
            id="missing-layout",
        ),
        pytest.param(
            {"t.j2": simple() + '{% include "_nope.j2" ignore missing %}'},
            [],
            id="ignore-missing-include",
        ),
        pytest.param(
            {"t.j2": "{% block subject %}x{% endblock %}{% block text %}y{% endblock %}"},
            ["template 't': has no {% block html %}: every template needs subject, text and html"],
            id="missing-block",
        ),
        pytest.param(
            {
                "_layout.j2": "{% block subject %}{% endblock %}{% block text %}{% endblock %}",
                "t.j2": '{% extends "_layout.j2" %}{% block html %}h{% endblock %}',
                "u.j2": '{% extends "_layout.j2" %}',
            },
            ["template 'u': has no {% block html %}"],
            id="blocks-count-with-the-layout",
        ),
        pytest.param(
            {
                "_layout.j2": "{% block subject %}\n{{ }}{% endblock %}",
                "a.j2": '{% extends "_layout.j2" %}',
                "b.j2": '{% extends "_layout.j2" %}',
            },
            ["template '_layout' line 2: syntax error: "],
            id="broken-layout-reported-once",
        ),
        pytest.param(
            {
                "_a.j2": '{% extends "_b.j2" %}',
                "_b.j2": '{% extends "_a.j2" %}',
                "t.j2": '{% extends "_a.j2" %}',
            },
            ["template 't': extends itself in a loop: t.j2 -> _a.j2 -> _b.j2 -> _a.j2"],
            id="extends-loop",
        ),
        pytest.param(
            {"Welcome Mail.j2": simple(), "ok.j2": simple()},
            ["template 'Welcome Mail': file name is not <name>.j2 or <name>.<locale>.j2"],
            id="bad-file-name",
        ),
        pytest.param(
            {
                "partials/_footer.j2": "{{ }}",
                "t.j2": simple(text='{% include "partials/_footer.j2" %}'),
            },
            ["template 'partials/_footer' line 1: syntax error: "],
            id="partial-in-a-subdirectory",
        ),
    ],
)
def test_check_reports_each_broken_file(
    tmp_path: Path, files: dict[str, str], messages: list[str]
) -> None:
    errors = Templates(write(tmp_path, files)).check()

    assert len(errors) == len(messages), errors
    for error, message in zip(errors, messages, strict=True):
        assert str(error).startswith(message)


def test_render_reports_a_missing_block(tmp_path: Path) -> None:
    templates = Templates(write(tmp_path, {"t.j2": "{% block subject %}x{% endblock %}"}))

    error = render_error(templates)

    assert error.reason.startswith("has no {% block text %}")


@pytest.mark.parametrize(
    ("name", "message"),
    [
        pytest.param("nope", "template 'nope': no template 'nope' in {dir}/; available: a, b"),
        pytest.param("_layout", "template '_layout': no template '_layout' in {dir}/; available"),
        pytest.param("../a", "template '../a': no template '../a' in {dir}/; available"),
    ],
)
def test_an_unknown_template_lists_the_available_ones(
    tmp_path: Path, name: str, message: str
) -> None:
    write(tmp_path, {"a.j2": simple(), "b.j2": simple(), "_layout.j2": simple()})

    error = render_error(Templates(tmp_path), name)

    assert str(error).startswith(message.format(dir=tmp_path))


def test_a_missing_directory_is_a_template_error(tmp_path: Path) -> None:
    with pytest.raises(TemplateError, match="does not exist or is not a directory"):
        Templates(tmp_path / "nowhere")


def test_a_file_that_is_not_utf8_is_reported(tmp_path: Path) -> None:
    (tmp_path / "t.j2").write_bytes(simple(subject="caf\xe9").encode("latin-1"))

    error = render_error(Templates(tmp_path))

    assert "is not UTF-8 text" in str(error)


@pytest.mark.parametrize(
    ("error", "text"),
    [
        pytest.param(TemplateError("t", 3, "why"), "template 't' line 3: why", id="line"),
        pytest.param(TemplateError("t", None, "why"), "template 't': why", id="no-line"),
        pytest.param(TemplateError("t", 3, "why", "t.j2"), "template 't' line 3: why", id="own"),
        pytest.param(
            TemplateError("t", 3, "why", "_l.j2"), "template 't' line 3 of _l.j2: why", id="other"
        ),
        pytest.param(
            TemplateError("t", None, "why", "_l.j2"), "template 't' in _l.j2: why", id="file"
        ),
        pytest.param(TemplateError("", None, "no directory"), "no directory", id="no-template"),
    ],
)
def test_template_error_text_and_pickling(error: TemplateError, text: str) -> None:
    copy = pickle.loads(pickle.dumps(error))

    assert str(error) == str(copy) == text
    assert (copy.template, copy.line, copy.reason, copy.file) == (
        error.template,
        error.line,
        error.reason,
        error.file,
    )


# --- mappings: keys before methods ----------------------------------------------------


@pytest.mark.parametrize(
    ("expression", "context", "text"),
    [
        pytest.param("{{ context.items | join(',') }}", {"items": ["a", "b"]}, "a,b", id="key"),
        pytest.param("{{ context.items | default('none') }}", {}, "none", id="missing-key"),
        pytest.param("{{ context.items is defined }}", {}, "False", id="is-defined"),
        pytest.param("{{ context.get('x', 'dflt') }}", {}, "dflt", id="get-method"),
        pytest.param(
            "{% for k, v in context.items() %}{{ k }}={{ v }};{% endfor %}",
            {"a": 1, "b": 2},
            "a=1;b=2;",
            id="items-method",
        ),
        pytest.param("{{ context.keys | join }}", {"keys": "k"}, "k", id="key-shadows-method"),
    ],
)
def test_on_a_mapping_dot_means_the_key_first(
    tmp_path: Path, expression: str, context: dict[str, Any], text: str
) -> None:
    templates = Templates(write(tmp_path, {"t.j2": simple(text=expression)}))

    assert templates.render("t", user=USER, context=context).text == text


def test_iterating_a_missing_key_is_an_undefined_error(tmp_path: Path) -> None:
    templates = Templates(
        write(tmp_path, {"t.j2": simple(text="{% for i in context.items %}{{ i }}{% endfor %}")})
    )

    error = render_error(templates, context={})

    assert str(error) == "template 't' line 2: 'dict object' has no attribute 'items'"


def test_top_level_sets_and_imports_in_a_child_reach_its_blocks(tmp_path: Path) -> None:
    write(
        tmp_path,
        {
            "_layout.j2": simple(text="[{% block body %}{% endblock %}]"),
            "_m.j2": "{% macro up(x) %}{{ x | upper }}{% endmacro %}",
            "t.j2": '{% extends "_layout.j2" %}\n{% from "_m.j2" import up %}\n'
            "{% set who = user.name %}\n{% block body %}{{ up(who) }}{% endblock %}",
        },
    )

    rendered = Templates(tmp_path).render("t", user={"name": "ada"})

    assert isinstance(rendered, Rendered)
    assert rendered.text == "[ADA]"


# --- compiled once --------------------------------------------------------------------


@pytest.fixture
def parses(monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Count how often Jinja parses each template file."""
    counts: Counter[str] = Counter()
    parse = jinja2.Environment.parse

    def counting(self: jinja2.Environment, source: str, name: str | None = None, *a: Any) -> Any:
        counts[name or "?"] += 1
        return parse(self, source, name, *a)

    monkeypatch.setattr(jinja2.Environment, "parse", counting)
    return counts


def test_each_file_is_compiled_once_per_part(parses: Counter[str]) -> None:
    templates = Templates(DEFAULT_TEMPLATE_DIR)
    for _ in range(3):
        templates.render("welcome", user=USER)
        templates.render("welcome", user=USER, locale="fr")
        templates.render("tips", user=USER)
    templates.check()
    templates.check()

    # Once for the plain-text parts, once for the html part; never again.
    assert parses["welcome.j2"] == 2
    assert parses["welcome.fr.j2"] == 2
    assert parses["_layout.j2"] == 2
    assert parses["_macros.j2"] == 2
    assert set(parses.values()) == {2}


def test_a_broken_file_is_not_parsed_again(tmp_path: Path, parses: Counter[str]) -> None:
    templates = Templates(write(tmp_path, {"t.j2": "{{ }}"}))

    first = render_error(templates)
    second = render_error(templates)
    templates.check()

    assert str(first) == str(second)
    assert parses["t.j2"] == 1


def test_edits_on_disk_are_seen_by_a_new_templates_object_only(shipped_copy: Path) -> None:
    templates = Templates(shipped_copy)
    first = templates.render("welcome", user=USER)
    layout = shipped_copy / "_layout.j2"
    layout.write_text(layout.read_text(encoding="utf-8").replace("--", "-- edited"), "utf-8")
    (shipped_copy / "welcome.j2").write_text(simple(subject="changed"), encoding="utf-8")

    cached = templates.render("welcome", user=USER)
    fresh = Templates(shipped_copy).render("welcome", user=USER)

    assert cached == first
    assert fresh.subject == "changed"
    assert fresh.version != first.version


# --- property: arbitrary traits never break out ---------------------------------------


SHIPPED_TEMPLATES = Templates(DEFAULT_TEMPLATE_DIR)
LINE_BREAKS = set("\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029")


@settings(database=None, max_examples=200, deadline=None)
@given(first_name=st.text(min_size=1), last_name=st.text())
def test_arbitrary_traits_never_escape_welcome(first_name: str, last_name: str) -> None:
    baseline = SHIPPED_TEMPLATES.render("welcome", user={**USER, "first_name": "x"})
    user = {**USER, "first_name": first_name, "last_name": last_name}
    try:
        rendered = SHIPPED_TEMPLATES.render("welcome", user=user)
    except TemplateError as exc:
        assert "the subject would contain a line break" in exc.reason
        assert LINE_BREAKS & set(first_name)
        return
    # Every "<" in the html comes from the template: the trait's are all escaped.
    assert rendered.html.count("<") == baseline.html.count("<")
    assert "\r" not in rendered.subject and "\n" not in rendered.subject
    assert first_name.strip() in rendered.subject
