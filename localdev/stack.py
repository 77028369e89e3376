"""The local development stack: Mosquitto (Debian's package) and Kafka (KRaft) assembled from
Maven Central jars, on loopback ports: a single node, or a cluster of three combined
broker+controller nodes in one static controller quorum (:class:`KafkaCluster`).

Used by ``edgewatch stack``, the demo and the test fixtures. Each service is a child process
in its own session, with its log in ``<state_dir>/<service>.log``; readiness is detected
(an open port, and for Kafka the "Kafka Server started" log line), never slept for.
A service can be stopped and started again on the same ports and data, which is how the
tests take a broker away and bring it back. A stack that outlives the command that started it
(``edgewatch stack up``) is kept track of in :mod:`localdev.stack_detached`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import shutil
import subprocess
import threading
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from edge.contract.errors import BrokerUnavailable
from localdev.kafka_admin import Durability, topic_durability
from localdev.kafka_admin import create_topics as create_topics  # its old home: callers import it from here
from localdev.service import READY_TIMEOUT_S as READY_TIMEOUT_S  # these: their old home, callers import them from here
from localdev.service import Service as Service
from localdev.service import free_port as free_port
from localdev.service import pid_alive as pid_alive
from localdev.service import port_open as port_open
from localdev.service import terminate as terminate
from localdev.service import wait_until as wait_until

log = logging.getLogger(__name__)

DEPLOY_DIR = Path(__file__).resolve().parent.parent / "deploy"
KAFKA_POM = DEPLOY_DIR / "kafka" / "pom.xml"

ServiceName = Literal["mosquitto", "kafka"]
SERVICE_NAMES: tuple[ServiceName, ...] = ("mosquitto", "kafka")


def cache_dir() -> Path:
    """Where downloaded broker jars are kept between runs (``EDGEWATCH_CACHE``)."""
    return Path(os.environ.get("EDGEWATCH_CACHE", Path.home() / ".cache" / "edgewatch"))


def missing_tools() -> list[str]:
    """Names of the programs the stack needs that are not installed, with how to get them."""
    missing = []
    if not _mosquitto_bin():
        missing.append("mosquitto (apt-get install mosquitto)")
    if not _java_bin():
        missing.append("java (apt-get install openjdk-17-jre-headless)")
    if not shutil.which("mvn") and not _jar_dir().joinpath(".complete").exists():
        missing.append("mvn (apt-get install maven)")
    return missing


def _mosquitto_bin() -> str | None:
    return shutil.which("mosquitto") or next((p for p in ("/usr/sbin/mosquitto",) if Path(p).exists()), None)


def _java_bin() -> str | None:
    home = os.environ.get("JAVA_HOME")
    if home and Path(home, "bin", "java").exists():
        return str(Path(home, "bin", "java"))
    return shutil.which("java")


def _jar_dir() -> Path:
    digest = hashlib.sha256(KAFKA_POM.read_bytes()).hexdigest()[:12]
    return cache_dir() / f"kafka-libs-{digest}"


def ensure_kafka_jars() -> Path:
    """Resolve the broker's jars with Maven once per pom version; later calls reuse them."""
    target = _jar_dir()
    if target.joinpath(".complete").exists():
        return target
    mvn = shutil.which("mvn")
    if not mvn:
        raise BrokerUnavailable("mvn is not installed: apt-get install maven (needed once to fetch the Kafka jars)")
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    log.info("kafka_jars_resolving pom=%s target=%s", KAFKA_POM, target)
    cmd = [mvn, "-B", "-q", "-f", str(KAFKA_POM), "dependency:copy-dependencies",
           "-DincludeScope=runtime", f"-DoutputDirectory={tmp}"]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise BrokerUnavailable(f"mvn could not resolve the Kafka jars:\n{result.stdout[-3000:]}{result.stderr[-2000:]}")
    tmp.joinpath(".complete").write_text("ok\n")
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


class Mosquitto(Service):
    name = "mosquitto"

    def config_lines(self, data_dir: Path) -> list[str]:
        """The development configuration: anonymous, loopback only. Subclasses replace it."""
        # Queue limits chosen for QoS 1 without silent loss: Mosquitto drops QoS 1 messages for a
        # persistent session past max_queued_messages (default 1000); the agent's intake is
        # bursty, so the dev broker holds up to 1M messages for an offline session.
        return [
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous true",
            "persistence true",
            f"persistence_location {data_dir}/",
            "autosave_interval 1",
            "max_queued_messages 1000000",
            "max_inflight_messages 100",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
        ]

    def prepare(self) -> None:
        data = self.state_dir / "mosquitto-data"
        data.mkdir(exist_ok=True)
        conf = self.config_lines(data)
        if os.geteuid() == 0:
            conf.append("user root")  # otherwise Mosquitto drops to 'mosquitto', who cannot read our files
        self.config_path.write_text("\n".join(conf) + "\n")

    @property
    def config_path(self) -> Path:
        return self.state_dir / "mosquitto.conf"

    def command(self) -> list[str]:
        binary = _mosquitto_bin()
        if not binary:
            raise BrokerUnavailable("mosquitto is not installed: apt-get install mosquitto")
        return [binary, "-c", str(self.config_path)]


class Kafka(Service):
    """One KRaft node, broker and controller in one JVM. Alone it is its own quorum; in a
    :class:`KafkaCluster` ``voters`` names every node's controller port and all share ``cluster_id``."""

    name = "kafka"

    def __init__(self, state_dir: Path, port: int, controller_port: int, heap: str = "512m", *, node_id: int = 1,
                 voters: str | None = None, brokers: int = 1, cluster_id: str | None = None) -> None:
        super().__init__(state_dir, port)
        self.controller_port = controller_port
        self.heap = heap
        self.node_id = node_id
        self.voters = voters or f"{node_id}@127.0.0.1:{controller_port}"
        self.durability = topic_durability(brokers)
        self.cluster_id = cluster_id

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def properties(self, data_dir: Path) -> str:
        """The text of ``server.properties`` (the secure broker has its own template)."""
        template = (DEPLOY_DIR / "kafka" / "server.properties").read_text()
        return template.format(port=self.port, controller_port=self.controller_port, data_dir=data_dir, node_id=self.node_id,
                               voters=self.voters, replication_factor=self.durability.replication_factor,
                               min_insync_replicas=self.durability.min_insync_replicas)

    def prepare(self) -> None:
        data = self.state_dir / "kafka-data"
        self.config_path.write_text(self.properties(data))
        shutil.copy(DEPLOY_DIR / "kafka" / "log4j2.properties", self.state_dir / "log4j2.properties")
        if not (data / "meta.properties").exists():
            self._format()

    def _java(self) -> list[str]:
        java = _java_bin()
        if not java:
            raise BrokerUnavailable("java is not installed: apt-get install openjdk-17-jre-headless")
        jars = ensure_kafka_jars()
        return [java, f"-Xmx{self.heap}", "-XX:+UseSerialGC", "-Xss1m",
                f"-Dlog4j2.configurationFile={self.state_dir / 'log4j2.properties'}",
                "-cp", f"{jars}/*"]

    def _format(self) -> None:
        cluster_id = self.cluster_id or new_cluster_id()
        cmd = self._java() + ["kafka.tools.StorageTool", "format", "--cluster-id", cluster_id,
                              "--config", str(self.config_path), "--ignore-formatted", *self.format_args()]
        result = subprocess.run(cmd, capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerUnavailable(f"kafka storage format failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")

    def format_args(self) -> list[str]:
        """Extra arguments for ``kafka-storage format`` (SCRAM users in the secure broker)."""
        return []

    @property
    def config_path(self) -> Path:
        return self.state_dir / "server.properties"

    def command(self) -> list[str]:
        return self._java() + ["kafka.Kafka", str(self.config_path)]

    def is_ready(self) -> bool:
        if not port_open(self.port):
            return False
        # the log is appended across restarts: only the marker after the latest start counts
        text = self.log_path.read_text(errors="replace")
        return "Kafka Server started" in text[self._log_offset:]

    def launch(self) -> None:
        self._log_offset = len(self.log_path.read_text(errors="replace")) if self.log_path.exists() else 0
        super().launch()

    def formatted_cluster_id(self) -> str | None:
        """The cluster id this node's storage was formatted with, or None before its first start."""
        meta = self.state_dir / "kafka-data" / "meta.properties"
        if not meta.exists():
            return None
        return next((line.split("=", 1)[1].strip() for line in meta.read_text().splitlines() if line.startswith("cluster.id=")), None)


def new_cluster_id() -> str:
    """A random KRaft cluster id (base64 of a UUID, never starting with '-')."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode().replace("-", "A")


class KafkaCluster:
    """``size`` Kafka nodes on loopback that form one cluster: each is broker and controller, the
    controller quorum is static (``controller.quorum.voters`` lists all), each node has its own state
    folder (``<state_dir>/kafka-<id>``; a single node uses ``state_dir`` itself, as it always has).

    Nodes are started together (a quorum of three elects a leader only once two are up) and can then
    be stopped, killed and started one by one on the same ports and data (``nodes[i]``)."""

    def __init__(self, state_dir: Path, size: int = 1, ports: Sequence[tuple[int | None, int | None]] = ()) -> None:
        ports = list(ports) + [(None, None)] * (size - len(ports))
        chosen = [(p or free_port(), c or free_port()) for p, c in ports[:size]]
        voters = ",".join(f"{i}@127.0.0.1:{c}" for i, (_, c) in enumerate(chosen, 1))
        dirs = [state_dir] if size == 1 else [state_dir / f"kafka-{i}" for i in range(1, size + 1)]
        self.nodes = [Kafka(d, p, c, node_id=i, voters=voters, brokers=size)
                      for i, (d, (p, c)) in enumerate(zip(dirs, chosen, strict=True), 1)]
        cluster_id = next((cid for n in self.nodes if (cid := n.formatted_cluster_id())), None) or new_cluster_id()
        for node in self.nodes:
            node.cluster_id = cluster_id

    @property
    def bootstrap(self) -> str:
        """Every node's address, comma-separated, as clients take it."""
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def durability(self) -> Durability:
        return topic_durability(len(self.nodes))

    def node(self, node_id: int) -> Kafka:
        return self.nodes[node_id - 1]

    def start(self, timeout_s: float = READY_TIMEOUT_S) -> list[Kafka]:
        """Start every node that is not running, all at once, and block until each is ready; returns the
        nodes started. On failure the nodes this call started are stopped and :class:`BrokerUnavailable` raised."""
        started = [n for n in self.nodes if n.pid is None]
        try:
            for node in started:
                node.launch()
            for node in started:
                node.wait_ready(timeout_s)
        except BaseException:
            for node in started:
                node.stop()
            raise
        return started

    def stop(self) -> None:
        """Stop every node, all at once: one by one, the last would wait out its stop timeout for a
        controller quorum that is gone."""
        threads = [threading.Thread(target=node.stop, name=f"stop-kafka-{node.node_id}") for node in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join()


@dataclass
class StackInfo:
    """Where the running stack listens, and what to stop; saved as ``stack.json``."""

    state_dir: str
    mqtt_host: str
    mqtt_port: int
    kafka_bootstrap: str
    mosquitto_pid: int
    kafka_pid: int
    kafka_controller_port: int = 0  # 0: not recorded (a stack.json written before it was)
    kafka_nodes: list[KafkaNodeInfo] = field(default_factory=list)  # every node; empty: a stack.json from before clusters


@dataclass
class KafkaNodeInfo:
    node_id: int
    port: int
    controller_port: int
    pid: int


class LocalStack:
    """Mosquitto plus Kafka (one node, or a cluster of ``brokers``) on free (or given) loopback ports
    under one state folder."""

    def __init__(self, state_dir: Path, *, mqtt_port: int | None = None, kafka_port: int | None = None,
                 controller_port: int | None = None, brokers: int = 1,
                 kafka_ports: Sequence[tuple[int | None, int | None]] = ()) -> None:
        self.state_dir = Path(state_dir).absolute()  # the brokers run with this folder as their working directory
        self.mosquitto = Mosquitto(self.state_dir, mqtt_port or free_port())
        self.cluster = KafkaCluster(self.state_dir, brokers, list(kafka_ports) or [(kafka_port, controller_port)])

    @property
    def kafka(self) -> Kafka:
        """The first Kafka node: the only one of a single-node stack."""
        return self.cluster.nodes[0]

    @property
    def mqtt_port(self) -> int:
        return self.mosquitto.port

    @property
    def kafka_bootstrap(self) -> str:
        return self.cluster.bootstrap

    def start(self) -> StackInfo:
        ensure_kafka_jars()
        try:
            self.mosquitto.start()
            self.cluster.start()
        except BaseException:
            self.stop()
            raise
        return self.save_info()

    def save_info(self) -> StackInfo:
        """Write ``stack.json``: the ports, and the pid of each service running now (0 for none)."""
        info = self.info()
        (self.state_dir / "stack.json").write_text(json.dumps(asdict(info), indent=2) + "\n")
        return info

    def service(self, name: ServiceName) -> Service:
        if name not in SERVICE_NAMES:
            raise ValueError(f"unknown service {name!r}; known: {', '.join(SERVICE_NAMES)}")
        return self.mosquitto if name == "mosquitto" else self.kafka

    def processes(self) -> list[tuple[str, Service]]:
        """Every broker process with its name: mosquitto, then kafka (or kafka-1, kafka-2, ... on a cluster)."""
        nodes = self.cluster.nodes
        return [("mosquitto", self.mosquitto)] + [("kafka" if len(nodes) == 1 else f"kafka-{n.node_id}", n) for n in nodes]

    def restart(self, name: ServiceName) -> None:
        """Stop one service (if it runs; kafka: every node) and start it again on the same ports and data;
        blocks until ready."""
        if name == "kafka":
            self.cluster.stop()
            self.cluster.start()
            return
        service = self.service(name)
        service.stop()
        service.start()

    def info(self) -> StackInfo:
        nodes = [KafkaNodeInfo(n.node_id, n.port, n.controller_port, n.pid or 0) for n in self.cluster.nodes]
        return StackInfo(str(self.state_dir), "127.0.0.1", self.mosquitto.port, self.cluster.bootstrap,
                         self.mosquitto.pid or 0, self.kafka.pid or 0, self.kafka.controller_port, nodes)

    def stop(self) -> None:
        self.cluster.stop()
        self.mosquitto.stop()


def load_info(state_dir: Path) -> StackInfo | None:
    """What ``stack.json`` in ``state_dir`` records, or None when there is none."""
    path = Path(state_dir) / "stack.json"
    if not path.exists():
        return None
    data = json.loads(path.read_text())
    nodes = [KafkaNodeInfo(**n) for n in data.pop("kafka_nodes", [])]
    return StackInfo(**data, kafka_nodes=nodes)
