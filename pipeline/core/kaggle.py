"""Kaggle downloads through the kaggle package's own API, cached by source.

The kaggle package authenticates (and may print or touch the network) when imported, and reads
its config folder and environment flags once, at import time. So it is imported lazily, with its
output swallowed, and each call re-reads the environment: what the user has set now is what
counts. Every failure a user can fix becomes one UserError sentence.
"""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from pipeline.core.errors import UserError
from pipeline.core.files import atomic_write_text, sha256_file

MARKER = "fetched.json"  # written beside an archive once it downloaded completely
TOKEN_URL = "https://www.kaggle.com/settings/api"
MISSING_CREDENTIALS = (
    "no Kaggle credentials found: create an API token at " + TOKEN_URL + " and save the "
    "kaggle.json it gives you as ~/.kaggle/kaggle.json (chmod 600), or set KAGGLE_USERNAME and "
    "KAGGLE_KEY (or KAGGLE_API_TOKEN) in the environment"
)


def config_dir(env: Mapping[str, str] | None = None) -> Path:
    """The folder where the kaggle package looks for kaggle.json (same rules as the package)."""
    env = os.environ if env is None else env
    # An explicit folder wins, as in the package.
    if env.get("KAGGLE_CONFIG_DIR"):
        return Path(env["KAGGLE_CONFIG_DIR"])
    home = Path(env.get("HOME") or Path.home())
    legacy = home / ".kaggle"
    # The package falls back to the XDG folder on Linux when ~/.kaggle does not exist.
    if legacy.exists() or os.name != "posix":
        return legacy
    return Path(env.get("XDG_CONFIG_HOME") or home / ".config") / "kaggle"


def find_credentials(env: Mapping[str, str] | None = None) -> str | None:
    """Where credentials would come from (a short description), or None when there are none.

    Checked before touching the package so a missing token is one clear sentence, not the
    package's page of help followed by exit(1).
    """
    env = os.environ if env is None else env
    home = Path(env.get("HOME") or Path.home())
    # Same order as KaggleApi.authenticate: access token, OAuth, then the legacy username/key.
    if env.get("KAGGLE_API_TOKEN"):
        return "KAGGLE_API_TOKEN"
    for name in ("access_token", "access_token.txt", "credentials.json"):
        if (home / ".kaggle" / name).is_file():
            return f"~/.kaggle/{name}"
    if env.get("KAGGLE_USERNAME") and env.get("KAGGLE_KEY"):
        return "KAGGLE_USERNAME/KAGGLE_KEY"
    # kaggle.json must hold both fields; a half-written one would fail later, less clearly.
    path = config_dir(env) / "kaggle.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    complete = isinstance(data, dict) and data.get("username") and data.get("key")
    return str(path) if complete else None


# ----------------------------------------------------------------------------------------------
# The client


@contextlib.contextmanager
def _silenced(quiet: bool = True) -> Iterator[None]:
    """Swallow the package's prints ('Dataset URL: ...', its auth help page) when quiet."""
    if not quiet:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        yield


def _new_api() -> Any:
    """An authenticated KaggleApi that honours the environment as it is now."""
    if find_credentials() is None:
        raise UserError(MISSING_CREDENTIALS)
    with _silenced():
        # Importing the package runs its own authenticate() and prints on failure.
        from kaggle.api.kaggle_api_extended import KaggleApi
    api = KaggleApi()
    # Class attributes frozen at import time; refresh them for this call.
    api.config_dir = str(config_dir())
    api.config = os.path.join(api.config_dir, api.config_file)
    api.args = ["--local"] if os.environ.get("KAGGLE_API_ENVIRONMENT") == "LOCALHOST" else []
    try:
        with _silenced():
            api.authenticate()
    except SystemExit:  # the package calls exit(1) when no method worked
        raise UserError(MISSING_CREDENTIALS) from None
    except Exception as error:  # token introspection goes over the network
        raise _explain(error, "Kaggle authentication") from None
    return api


OFFLINE_ADVICE = ("connect to the internet, or use a dir:PATH or zip:PATH source with files you "
                  "already have")  # what a fetch can do instead; submit and listing say theirs


def _explain(error: Exception, what: str, rules_url: str = "",
             offline_advice: str = OFFLINE_ADVICE) -> UserError:
    """Turn a requests/kaggle failure into one actionable sentence; `offline_advice` ends the
    sentence when Kaggle cannot be reached at all."""
    import requests  # a dependency of kaggle; imported late like it

    # No answer at all: offline, DNS failure, firewall.
    if isinstance(error, (requests.ConnectionError, requests.Timeout)):
        return UserError(f"{what} failed: cannot reach Kaggle (offline?); {offline_advice}")
    # The kaggle client raises requests' HTTPError with the response attached.
    status = getattr(getattr(error, "response", None), "status_code", None)
    if status == 401:
        return UserError(
            f"{what} failed: Kaggle refused the credentials (401); create a new token at "
            f"{TOKEN_URL} and replace ~/.kaggle/kaggle.json"
        )
    if status == 403 and rules_url:
        return UserError(f"{what} failed (403): accept the competition rules at {rules_url} first")
    if status == 403:
        return UserError(f"{what} failed (403): your account has no access to it")
    if status == 404:
        return UserError(f"{what} failed (404): no such name on Kaggle; check the spelling")
    if status == 429:
        return UserError(f"{what} failed (429): Kaggle rate-limits you; try again in a while")
    return UserError(f"{what} failed: {type(error).__name__}: {redact_credentials(str(error))}")


def _secrets(env: Mapping[str, str] | None = None) -> list[str]:
    """The credential strings this machine holds, in every form a request may carry them."""
    env = os.environ if env is None else env
    user, values = env.get("KAGGLE_USERNAME", ""), [env.get("KAGGLE_KEY", ""),
                                                    env.get("KAGGLE_API_TOKEN", "")]
    with contextlib.suppress(OSError, ValueError, AttributeError):
        stored = json.loads((config_dir(env) / "kaggle.json").read_text(encoding="utf-8"))
        user = user or str(stored.get("username", ""))
        values.append(str(stored.get("key", "")))
    forms = []
    for value in filter(None, values):
        forms += [value, base64.b64encode(value.encode()).decode(),
                  base64.b64encode(f"{user}:{value}".encode()).decode()]
    return forms


def redact_credentials(text: str, env: Mapping[str, str] | None = None) -> str:
    """`text` with every Kaggle credential (plain or base64, as Basic/Bearer send them) masked:
    an error message from the client or a server may quote the request it failed on."""
    for secret in _secrets(env):
        text = text.replace(secret, "***")
    return text


# ----------------------------------------------------------------------------------------------
# Cache


def cached_archive(folder: Path) -> Path | None:
    """The completely downloaded archive in `folder`, if its marker still matches it."""
    # Any doubt (no marker, other size, other hash) means "download again": never trust a half.
    try:
        marker = json.loads((folder / MARKER).read_text(encoding="utf-8"))
        archive = folder / marker["archive"]
        ok = archive.is_file() and archive.stat().st_size == marker["bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return archive if ok and sha256_file(archive) == marker["sha256"] else None


def _seal(folder: Path, archive: Path, info: dict[str, Any]) -> Path:
    """Write the marker that makes a later fetch of the same source skip the network."""
    marker = {"archive": archive.name, "bytes": archive.stat().st_size,
              "sha256": sha256_file(archive), **info}
    # Atomic: a killed run leaves no half marker.
    atomic_write_text(folder / MARKER, json.dumps(marker, indent=1, ensure_ascii=False))
    return archive


def _competition_archive(folder: Path, name: str) -> Path:
    """The file the client just wrote: NAME plus the extension of the server's URL."""
    files = [p for p in folder.glob(f"{name}.*")
             if p.is_file() and not p.name.endswith((".tmp", ".kaggle-partial"))]
    if len(files) != 1:
        raise UserError(f"Kaggle sent no archive into {folder}; delete that folder and try again")
    return files[0]


# ----------------------------------------------------------------------------------------------
# Public entry points


def download_dataset(owner: str, slug: str, version: int | None, folder: Path,
                     quiet: bool = False) -> tuple[Path, str]:
    """Download dataset OWNER/SLUG (a version, or the latest) as a zip into `folder`.

    Returns (archive path, licence names). A completed download in `folder` is reused without
    any network call, so a second fetch works offline.
    """
    # Cached: no credentials, no network needed.
    cached = cached_archive(folder)
    if cached is not None:
        return cached, json.loads((folder / MARKER).read_text(encoding="utf-8")).get("license", "")
    from kagglesdk.datasets.types.dataset_api_service import ApiGetDatasetMetadataRequest

    api = _new_api()
    # The package spells a version as OWNER/SLUG/VERSION.
    ref = f"{owner}/{slug}" + (f"/{version}" if version else "")
    what = f"Kaggle dataset {owner}/{slug}"
    folder.mkdir(parents=True, exist_ok=True)
    try:
        # Metadata first: a clean 404 for a typo, and the licence for the record.
        request = ApiGetDatasetMetadataRequest()
        request.owner_slug, request.dataset_slug = owner, slug
        with api.build_kaggle_client() as kaggle:
            meta = kaggle.datasets.dataset_api_client.get_dataset_metadata(request)
        if meta.error_message:
            raise UserError(f"{what}: Kaggle says {meta.error_message}")
        licenses = [x.name for x in (meta.info.licenses if meta.info else []) if x.name]
        # Follows Kaggle's redirect to the zip and streams it; resumes a partial file left in
        # `folder` by a killed run (the package keeps a .kaggle-partial marker for that).
        with _silenced(quiet):
            api.dataset_download_files(ref, path=str(folder), quiet=quiet, licenses=licenses)
    except UserError:
        raise
    except Exception as error:  # requests and kagglesdk raise many types; all end here
        raise _explain(error, f"download of {what}") from None
    license_text = ", ".join(licenses)
    archive = _seal(folder, folder / f"{slug}.zip", {"source": ref, "license": license_text})
    return archive, license_text


def download_competition(name: str, folder: Path, quiet: bool = False) -> Path:
    """Download all data files of competition NAME into `folder` (cached like datasets)."""
    cached = cached_archive(folder)
    if cached is not None:
        return cached
    api = _new_api()
    # Competitions answer 403 until the user accepted the rules on the website.
    folder.mkdir(parents=True, exist_ok=True)
    rules = f"https://www.kaggle.com/competitions/{name}/rules"
    try:
        with _silenced(quiet):
            api.competition_download_files(name, path=str(folder), quiet=quiet)
    except Exception as error:
        raise _explain(error, f"download of Kaggle competition {name}", rules) from None
    return _seal(folder, _competition_archive(folder, name), {"source": f"competition {name}"})
