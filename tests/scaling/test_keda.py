"""KEDA's external scaler contract against the running scaler: a client generated from our
externalscaler.proto calls all four methods and reads the replica target the scaler's status shows."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from auditmesh.config import StoreConfig
from auditmesh.supervisor import ServiceProcess, Supervisor, wait_healthy
from auditpb.keda import externalscaler_pb2 as kpb
from auditpb.keda import externalscaler_pb2_grpc as kpb_grpc
from auditpb.v1 import scaler_pb2 as spb
from auditpb.v1 import scaler_pb2_grpc as spb_grpc
from tests.conftest import TEST_KEYSPACE, slot_port
from tests.scaling.conftest import REDIS_URL

PORT = slot_port(27986)


@pytest.fixture(scope="module")
def keda_scaler(store_config: StoreConfig, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The scaler alone with the KEDA actuator: min 2, max 5, emergency floor 4."""
    supervisor = Supervisor(Path(tmp_path_factory.mktemp("keda")))
    proc = ServiceProcess(
        "scaler",
        "services.scaler",
        PORT,
        {
            "AUDITMESH_KEYSPACE": TEST_KEYSPACE,
            "AUDITMESH_REDIS_URL": REDIS_URL,
            "AUDITMESH_MEMBERSHIP_PREFIX": f"am:members:keda:{PORT}",
            "AUDITMESH_SCALER_PORT": str(PORT),
            "AUDITMESH_SCALER_ACTUATOR": "keda",
            "AUDITMESH_SCALER_MIN_REPLICAS": "2",
            "AUDITMESH_SCALER_MAX_REPLICAS": "5",
            "AUDITMESH_SCALER_EMERGENCY_REPLICAS": "4",
            "AUDITMESH_SCALER_INTERVAL_S": "0.2",
        },
    )
    supervisor.start(proc)
    try:
        wait_healthy(proc.target, 60, supervisor.log_file(proc.name))
        yield proc.target
    finally:
        supervisor.stop(proc.name)


def test_keda_reads_the_scalers_target_through_all_four_methods(keda_scaler: str) -> None:
    """IsActive, StreamIsActive, GetMetricSpec (target 1 per replica) and GetMetrics (the target)
    answer as KEDA expects, and the metric follows the target when emergency mode raises it."""
    ref = kpb.ScaledObjectRef(name="processor", namespace="auditmesh", scalerMetadata={"component": "processor"})
    with grpc.insecure_channel(keda_scaler) as channel:
        keda = kpb_grpc.ExternalScalerStub(channel)
        scaler = spb_grpc.ScalerServiceStub(channel)
        status = scaler.Status(spb.StatusRequest(), timeout=5)
        assert status.actuator == "keda" and status.target == 2  # min replicas: the first evaluation's floor
        assert keda.IsActive(ref, timeout=5).result is True
        stream = keda.StreamIsActive(ref, timeout=5)
        assert next(iter(stream)).result is True
        stream.cancel()
        (spec,) = keda.GetMetricSpec(ref, timeout=5).metricSpecs
        assert (spec.metricName, spec.targetSize, spec.targetSizeFloat) == ("auditmesh-processors", 1, 1.0)
        request = kpb.GetMetricsRequest(scaledObjectRef=ref, metricName=spec.metricName)
        (value,) = keda.GetMetrics(request, timeout=5).metricValues
        assert (value.metricName, value.metricValue, value.metricValueFloat) == (spec.metricName, 2, 2.0)
        raised = scaler.SetEmergency(spb.EmergencyRequest(on=True), timeout=5)
        assert raised.target == 4 and raised.emergency
        (value,) = keda.GetMetrics(request, timeout=5).metricValues
        assert (value.metricValue, value.metricValueFloat) == (4, 4.0)
        assert scaler.Status(spb.StatusRequest(), timeout=5).target == value.metricValue
        assert scaler.SetEmergency(spb.EmergencyRequest(on=False), timeout=5).emergency is False
