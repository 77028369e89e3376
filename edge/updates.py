"""Receiving model updates on the device: retained MQTT announce + chunks -> a verified model folder.

The downloader has its own MQTT connection (persistent session, automatic reconnect), so a
transfer never competes with reading intake. Its callbacks run on that client's network thread
and do only small file writes. What it guarantees before calling ``on_ready``: the manifest is
signed by a trusted key, the agent's compatibility check passed, and the assembled
``model.onnx`` matches the signed sha256.

Bounds, all checked on the announce before anything of its transfer is written: the announce's
size and chunk list must be the ones its manifest signs (:func:`edge.signing.verify_announce`),
so every chunk written is one the signer listed; the size must be within ``max_artifact_bytes``;
the downloads folder must stay within ``max_download_bytes``; and the disk must have room for the
chunks still missing plus the assembled ``model.onnx``. The downloads folder holds one transfer
at a time: accepting an announce abandons any other (its partial folder is deleted), as does a
refusal, a failed write or a failed final hash. Verified chunks stay on disk across a dropped
connection or a restart, so a transfer resumes with the chunks still missing; :meth:`start`
first deletes whatever under the downloads folder is not such a resumable transfer.

Given its agent's id, the downloader also listens on the agent's own announce topic
(:func:`~edge.contract.update.agent_announce_topic`), where a rollout announces a version to this
agent alone; such an announce is handled as the group's is. An empty message there (the registry
deleting a retained announce) is ignored. A version is looked at once (:attr:`ModelDownloader.skip`),
with one exception: the version live before the current one, announced again on the agent's
topic, is fetched again, because that is how a rollout is aborted (the agent swaps it back in
without a trial, :mod:`edge.modelswap`). On the group topic it is fetched again only while no
announce stands on the agent's own topic (``registry rollback`` then ``publish``): while a wave
runs, the group's retained announce is still the previous production version, and a reconnect
would otherwise roll the wave's agents back. The agent's topic is subscribed first, so its
retained announce is seen before the group's. The live version announced on the agent's topic is
an abort that came before the candidate went live: every transfer in flight is abandoned and
``on_live_announced`` withdraws the candidate (its shadow trial ends, it never goes live).
"""

from __future__ import annotations

import hashlib
import logging
import shutil
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edge.contract import ContractError, ManifestError, ModelManifest, encode_manifest
from edge.contract.update import ModelAnnounce, agent_announce_topic, announce_topic, decode_announce, encode_announce
from edge.signing import TrustedKeys, verify_announce

log = logging.getLogger(__name__)

ReadyCallback = Callable[[Path, ModelAnnounce], None]
RefusedCallback = Callable[[str, str, str], None]  # name, version, reason
CompatibleCheck = Callable[[ModelAnnounce], str | None]  # returns a reason to refuse, or None
FreeBytes = Callable[[Path], int]  # free bytes on the file system holding a folder
PreviousModel = Callable[[], ModelManifest | None]  # the model live before the current one, if any

MAX_ARTIFACT_BYTES = 64 * 1024 * 1024  # defaults of updates.max_artifact_bytes and updates.max_download_bytes
MAX_DOWNLOAD_BYTES = 128 * 1024 * 1024
_REFUSED_REMEMBERED = 64  # refused announce payloads not looked at again (a retained one comes back on reconnect)
ANNOUNCE_FILE = "announce.json"
_MAX_ANNOUNCE_BYTES = 1 << 20  # what decode_announce takes; a larger announce.json is not read


def free_disk_bytes(folder: Path) -> int:
    """Free bytes on the file system of ``folder``, or of its nearest existing parent."""
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


class ModelDownloader:
    def __init__(self, *, host: str, port: int, group: str, state_dir: Path, trusted_keys: TrustedKeys,
                 on_ready: ReadyCallback, on_refused: RefusedCallback, compatible: CompatibleCheck = lambda a: None,
                 prefix: str = "edgewatch", client_id: str = "edgewatch-updates",
                 username: str | None = None, password: str | None = None, tls_ca_file: str | None = None,
                 max_artifact_bytes: int = MAX_ARTIFACT_BYTES, max_download_bytes: int = MAX_DOWNLOAD_BYTES,
                 free_bytes: FreeBytes = free_disk_bytes, agent_id: str = "", previous: PreviousModel = lambda: None,
                 live: PreviousModel = lambda: None, on_live_announced: Callable[[ModelManifest], None] = lambda m: None) -> None:
        self.prefix = prefix
        self.group = group
        self.agent_topic = agent_announce_topic(group, agent_id, prefix) if agent_id else None  # None: the group's only
        self.previous = previous  # called on paho's thread, as are the two below
        self.live = live
        self.on_live_announced = on_live_announced
        self._own: ModelManifest | None = None  # the manifest standing on the agent's own topic (None: none)
        self.state_dir = Path(state_dir)
        self.downloads = self.state_dir / "downloads"
        self.trusted_keys = trusted_keys
        self.on_ready = on_ready
        self.on_refused = on_refused
        self.compatible = compatible
        self.max_artifact_bytes = max_artifact_bytes
        self.max_download_bytes = max_download_bytes
        self.free_bytes = free_bytes  # replaceable, e.g. by tests
        self.skip: set[tuple[str, str]] = set()  # versions live, being fetched or fetched: not looked at again
        self._refused: OrderedDict[bytes, None] = OrderedDict()  # sha256 of refused announce payloads, bounded
        self._active: dict[str, ModelAnnounce] = {}  # chunk topic prefix -> announce being fetched
        self.chunks_written = 0
        self._client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        if username:
            self._client.username_pw_set(username, password)
        if tls_ca_file:
            self._client.tls_set(ca_certs=tls_ca_file)
        self._client.reconnect_delay_set(1, 30)
        self._client.on_connect = self._on_connect
        self._client.on_message = self._on_message
        self._host, self._port = host, port

    def start(self) -> None:
        """Delete stale partial downloads (:meth:`clean_downloads`), then connect asynchronously;
        the network loop runs in paho's thread and reconnects by itself."""
        self.clean_downloads()
        self._client.connect_async(self._host, self._port)
        self._client.loop_start()

    def stop(self) -> None:
        """Disconnect; a transfer in flight keeps its verified chunks for the next start."""
        self._client.disconnect()
        self._client.loop_stop()

    def clean_downloads(self) -> None:
        """Keep under the downloads folder only the newest transfer a restart can resume: an
        ``announce.json`` that still passes every check of a new announce (signature, signed size
        and chunks, ``max_artifact_bytes``, not in :attr:`skip`) with chunk files that match their
        signed hashes. Everything else (other versions, files of older edgewatch versions, bad or
        unfinished chunk files) is deleted. Called by :meth:`start` before the client connects;
        reads each kept chunk once."""
        if not self.downloads.is_dir() or self.downloads.is_symlink():
            _remove(self.downloads)
            return
        kept = [work for work in self._partials() if self._resumable(work)]
        kept.sort(key=lambda work: (work / ANNOUNCE_FILE).stat().st_mtime)
        newest = kept[-1] if kept and _bytes_under(kept[-1]) <= self.max_download_bytes else None
        self._remove_downloads_except(newest)

    def _partials(self) -> list[Path]:
        return [work for name in self.downloads.iterdir() if name.is_dir() and not name.is_symlink()
                for work in name.iterdir() if work.is_dir() and not work.is_symlink()]

    def _resumable(self, work: Path) -> bool:
        path = work / ANNOUNCE_FILE
        try:
            if path.is_symlink() or path.stat().st_size > _MAX_ANNOUNCE_BYTES:
                return False
            announce = decode_announce(path.read_bytes())
        except (OSError, ContractError):
            return False
        m = announce.manifest
        if (m.name, m.version) != (work.parent.name, work.name) or (m.name, m.version) in self.skip \
                or self._checks(announce) is not None:
            return False
        expected = {f"{i}.chunk": h for i, h in enumerate(announce.chunk_sha256)}
        for item in work.iterdir():
            if item.name == ANNOUNCE_FILE:
                continue
            if not (item.is_file() and not item.is_symlink() and item.name in expected
                    and item.stat().st_size <= announce.chunk_size
                    and hashlib.sha256(item.read_bytes()).hexdigest() == expected[item.name]):
                _remove(item)
        return True

    def _on_connect(self, client: mqtt.Client, userdata: object, flags: object, reason: object, props: object) -> None:
        if self.agent_topic is not None:  # first: its retained announce decides how the group's is taken
            client.subscribe(self.agent_topic, qos=1)
        client.subscribe(announce_topic(self.group, self.prefix), qos=1)
        for topic in self._active:
            client.subscribe(topic + "+", qos=1)

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            if msg.topic == self.agent_topic:
                self._own = None
                if msg.payload:  # empty: the retained announce was deleted
                    self._on_announce(bytes(msg.payload), to_agent=True)
            elif msg.topic.endswith("/announce"):
                self._on_announce(bytes(msg.payload))
            else:
                self._on_chunk(msg.topic, bytes(msg.payload))
        except Exception:  # a bad update must never take the downloader (or the agent) down
            log.exception("model_update_failed topic=%s", msg.topic)

    def _dir(self, kind: str, name: str, version: str) -> Path:
        return self.state_dir / kind / name / version

    def _on_announce(self, payload: bytes, to_agent: bool = False) -> None:
        digest = hashlib.sha256(payload).digest()
        if digest in self._refused:
            return
        try:
            announce = decode_announce(payload)
        except ContractError as exc:
            self._remember_refused(digest)
            self.on_refused("unknown", "unknown", f"malformed announce: {exc}")
            return
        m = announce.manifest
        if to_agent:
            self._own = m
        if to_agent and _same(self.live(), m):
            self._abandon_others(self._dir("downloads", m.name, m.version), f"the live version {m.version} was announced again")
            self.on_live_announced(m)
            return
        rollback = _same(self.previous(), m) and (to_agent or self._own is None)
        if (m.name, m.version) in self.skip and not rollback:
            return
        work = self._dir("downloads", m.name, m.version)
        reason = self._checks(announce)
        if reason is None:
            self._abandon_others(work, f"superseded by {m.version}")
            reason = self._room(announce, work)
        if reason is not None:
            self._remember_refused(digest)
            _remove(work)
            self._refuse(m.name, m.version, reason)
            return
        try:
            work.mkdir(parents=True, exist_ok=True)
            (work / ANNOUNCE_FILE).write_bytes(encode_announce(announce))
        except OSError as exc:
            _remove(work)
            self._refuse(m.name, m.version, f"cannot start the download: {exc}")
            return
        self.skip.add((m.name, m.version))
        topic = f"{self.prefix}/models/{m.name}/{m.version}/chunks/"
        self._active[topic] = announce
        log.info("model_download_started name=%s version=%s bytes=%d chunks=%d", m.name, m.version, announce.size,
                 len(announce.chunk_sha256))
        if not self._maybe_finish(topic, announce):
            self._client.subscribe(topic + "+", qos=1)

    def _checks(self, announce: ModelAnnounce) -> str | None:
        """Why this announce is refused on its own merits (signature, signed size and chunks, size
        cap, compatibility), or None. Touches no file."""
        try:
            verify_announce(announce, self.trusted_keys)
        except ManifestError as exc:
            return str(exc)
        if announce.size > self.max_artifact_bytes:
            return f"artifact of {announce.size} bytes is over updates.max_artifact_bytes ({self.max_artifact_bytes})"
        reason = self.compatible(announce)
        return f"incompatible: {reason}" if reason else None

    def _room(self, announce: ModelAnnounce, work: Path) -> str | None:
        """Why the downloads folder or the disk has no room for this transfer, or None. Counts the
        chunks already on disk for it (a resumed transfer), and the assembled copy in the disk check."""
        have = sum(p.stat().st_size for i in range(len(announce.chunk_sha256)) if (p := work / f"{i}.chunk").is_file())
        held = _bytes_under(self.downloads) - _bytes_under(work)
        total = held + announce.size + len(encode_announce(announce))
        if total > self.max_download_bytes:
            return (f"the downloads folder would hold {total} bytes ({held} already), over "
                    f"updates.max_download_bytes ({self.max_download_bytes})")
        need, free = announce.size - have + announce.size, self.free_bytes(self.state_dir)
        if need > free:
            return f"not enough free disk: {need} bytes needed (missing chunks and the assembled model.onnx), {free} free"
        return None

    def _abandon_others(self, keep: Path, reason: str) -> None:
        """Stop every transfer but ``keep``'s and delete every other partial download."""
        for topic, announce in list(self._active.items()):
            m = announce.manifest
            if self._dir("downloads", m.name, m.version) != keep:
                self._drop(topic)
                self.skip.discard((m.name, m.version))  # announced again later, it resumes from scratch
                log.warning("model_download_abandoned name=%s version=%s reason=%s", m.name, m.version, reason)
        self._remove_downloads_except(keep)

    def _remove_downloads_except(self, keep: Path | None) -> None:
        if not self.downloads.is_dir():
            return
        for name in self.downloads.iterdir():
            if keep is not None and name == keep.parent and name.is_dir() and not name.is_symlink():
                for work in name.iterdir():
                    if work != keep:
                        _remove(work)
            else:
                _remove(name)

    def _drop(self, topic: str) -> None:
        self._active.pop(topic, None)
        self._client.unsubscribe(topic + "+")

    def _on_chunk(self, topic: str, payload: bytes) -> None:
        prefix, _, index_text = topic.rpartition("/")
        announce = self._active.get(prefix + "/")
        if announce is None or not index_text.isdigit():
            return
        index = int(index_text)
        if index >= len(announce.chunk_sha256) or hashlib.sha256(payload).hexdigest() != announce.chunk_sha256[index]:
            log.warning("model_chunk_rejected topic=%s reason=hash_mismatch", topic)
            return
        m = announce.manifest
        work = self._dir("downloads", m.name, m.version)
        path = work / f"{index}.chunk"
        if not path.exists():
            tmp = path.with_suffix(".tmp")
            try:
                tmp.write_bytes(payload)
                tmp.replace(path)
            except OSError as exc:
                self._drop(prefix + "/")
                _remove(work)
                self._refuse(m.name, m.version, f"cannot write chunk {index}: {exc}")
                return
            self.chunks_written += 1
        self._maybe_finish(prefix + "/", announce)

    def _maybe_finish(self, topic: str, announce: ModelAnnounce) -> bool:
        m = announce.manifest
        work = self._dir("downloads", m.name, m.version)
        parts = [work / f"{i}.chunk" for i in range(len(announce.chunk_sha256))]
        if not all(p.exists() for p in parts):
            return False
        self._drop(topic)
        digest = hashlib.sha256()
        for p in parts:  # one chunk in memory at a time, here and below
            digest.update(p.read_bytes())
        if digest.hexdigest() != m.sha256:
            _remove(work)
            self._refuse(m.name, m.version, "assembled model.onnx does not match the signed sha256")
            return True
        target = self._dir("models", m.name, m.version)
        try:
            _remove(target)
            target.mkdir(parents=True)
            with (target / "model.onnx").open("wb") as out:
                for p in parts:
                    out.write(p.read_bytes())
            (target / "manifest.json").write_bytes(encode_manifest(m))
        except OSError as exc:
            _remove(target)
            self._refuse(m.name, m.version, f"cannot write the model folder: {exc}")
            return True
        finally:
            _remove(work)
        log.info("model_downloaded name=%s version=%s bytes=%d", m.name, m.version, announce.size)
        self.on_ready(target, announce)
        return True

    def _remember_refused(self, digest: bytes) -> None:
        self._refused[digest] = None
        while len(self._refused) > _REFUSED_REMEMBERED:
            self._refused.popitem(last=False)

    def _refuse(self, name: str, version: str, reason: str) -> None:
        log.warning("model_update_refused name=%s version=%s reason=%s", name, version, reason)
        self.on_refused(name, version, reason)


def _same(known: ModelManifest | None, m: ModelManifest) -> bool:
    """Whether ``m`` is the model ``known`` (same name, version and artifact)."""
    return known is not None and (known.name, known.version, known.sha256) == (m.name, m.version, m.sha256)


def _bytes_under(folder: Path) -> int:
    """Bytes of the regular files under ``folder`` (0 if it does not exist); links are not followed."""
    if not folder.is_dir() or folder.is_symlink():
        return folder.lstat().st_size if folder.is_file() and not folder.is_symlink() else 0
    return sum(p.lstat().st_size for p in folder.rglob("*") if p.is_file() and not p.is_symlink())


def _remove(path: Path) -> None:
    """Delete a file, a link or a folder tree; missing is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
