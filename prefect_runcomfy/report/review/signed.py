"""The review as a link can open it from a bucket: a copy whose every link is pre-signed.

A pre-signed URL opens one object. The review's `index.html` links its videos, previews,
sidecars and pages by relative links, which resolve beside the signed index but carry no
signature: a private bucket refuses them. So for a store that can sign (S3, GCS) the review is
written a second time, each file as `_review/signed-<name>.html`, with every link it holds
replaced by a pre-signed URL of its target; a link to another file of the review points at
that file's signed copy. The summary artifact links the signed index. The copies stop working
when their signatures expire; `index.html`, with its relative links, stays the lasting review
(download the folder, or serve it).

Pure: the files and a signer in, the copies out.

```python
copies = signed_copies(files, lambda names: store.sign_many(names, 7 * 86400), note)
sorted(copies)   # ['_review/signed-index.html'] for a small run
```
"""

from __future__ import annotations

import html
import posixpath
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping

from prefect_runcomfy.report.review.pages import PAGES_FOLDER

SIGNED_PREFIX = f"{PAGES_FOLDER}/signed-"
"""Where the signed copies are: `_review/signed-index.html`, `_review/signed-page-0001.html`."""

Signer = Callable[[Iterable[str]], Mapping[str, str]]
"""Names under the output location in; their pre-signed URLs out (none for a name it cannot
sign)."""

# A link attribute as the templates write it: a relative link holds no ':' (`file_url`
# encodes it), so `data:` URIs and absolute URLs are left alone, and so are `#` anchors.
_LINK = re.compile(r'(\s(?:href|src|poster|data-poster)=")([^":#]+)(#[^"]*)?(")')

NOTE_MARK = '<p class="sub links-note" hidden></p>'
"""Where a file of the review says how long its links live (replaced in the signed copies)."""


def signed_name(name: str) -> str:
    """The signed copy of review file `name`: `index.html` → `_review/signed-index.html`."""
    return SIGNED_PREFIX + posixpath.basename(name)


def is_signed_name(name: str) -> bool:
    """Whether `name` (under the output location) is a signed copy of a review file."""
    rest = name[len(SIGNED_PREFIX) :]
    return name.startswith(SIGNED_PREFIX) and rest.endswith(".html") and "/" not in rest


def _target(file: str, link: str) -> str:
    """The name under the output location that `link`, written in `file`, points at."""
    joined = posixpath.join(posixpath.dirname(file), urllib.parse.unquote(html.unescape(link)))
    return posixpath.normpath(joined)


def signed_copies(files: Mapping[str, str], sign: Signer, note: str) -> dict[str, str]:
    """The signed copy of each review file (`signed_name` → HTML), every relative link
    replaced by its target's pre-signed URL (a review file's: its copy's), and `note` (how
    long the links live; escaped here) said where the file marks it. None when the signer
    signs nothing (the store cannot sign).

    A link whose target cannot be signed is left as it is."""
    targets = {
        _target(name, match.group(2))
        for name, text in files.items()
        for match in _LINK.finditer(text)
    }
    wanted = {t: signed_name(t) if t in files else t for t in targets}
    wanted.update({name: signed_name(name) for name in files})
    urls = dict(sign(sorted(set(wanted.values()))))
    if not urls:
        return {}
    by_target = {t: urls[s] for t, s in wanted.items() if s in urls}

    def replace(name: str) -> Callable[[re.Match[str]], str]:
        def one(match: re.Match[str]) -> str:
            url = by_target.get(_target(name, match.group(2)))
            if url is None:
                return match.group(0)
            return f"{match.group(1)}{html.escape(url, quote=True)}{match.group(3) or ''}{match.group(4)}"

        return one

    said = f'<p class="sub links-note">{html.escape(note)}</p>'
    return {
        signed_name(name): _LINK.sub(replace(name), text).replace(NOTE_MARK, said, 1)
        for name, text in files.items()
    }


__all__ = ["NOTE_MARK", "SIGNED_PREFIX", "Signer", "is_signed_name", "signed_copies", "signed_name"]
