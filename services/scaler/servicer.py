"""ScalerService (load reports in, status and the emergency switch out) and KEDA's
ExternalScaler contract over the same engine."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc

from auditmesh.scaling.engine import Engine
from auditpb.keda import externalscaler_pb2 as kpb
from auditpb.keda import externalscaler_pb2_grpc as kpb_grpc
from auditpb.v1 import scaler_pb2 as spb
from auditpb.v1 import scaler_pb2_grpc as spb_grpc

__all__ = ["ExternalScalerServicer", "ScalerServicer"]


class ScalerServicer(spb_grpc.ScalerServiceServicer):
    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    async def Report(  # noqa: N802 - gRPC method name
        self, request_iterator: AsyncIterator[spb.LoadReport], context: grpc.aio.ServicerContext[Any, Any]
    ) -> spb.ReportSummary:
        count = 0
        async for report in request_iterator:
            self._engine.report(report)
            count += 1
        return spb.ReportSummary(reports=count)

    async def Status(self, request: spb.StatusRequest, context: grpc.aio.ServicerContext[Any, Any]) -> spb.ScalerStatus:  # noqa: N802
        return self._engine.status()

    async def SetEmergency(
        self, request: spb.EmergencyRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> spb.ScalerStatus:  # noqa: N802
        self._engine.set_emergency(request.on)
        await self._engine.tick()  # applied now, not at the next interval
        return self._engine.status()


class ExternalScalerServicer(kpb_grpc.ExternalScalerServicer):
    """KEDA's external scaler: the metric is the processor count the scaler wants, with a target
    of 1 per replica, so the HPA KEDA makes sets replicas = the scaler's target."""

    def __init__(self, engine: Engine, metric: str, interval_s: float = 1.0) -> None:
        self._engine = engine
        self._metric = metric
        self._interval_s = interval_s

    def _metric_name(self, ref: kpb.ScaledObjectRef) -> str:
        return ref.scalerMetadata.get("metricName") or self._metric

    async def IsActive(
        self, request: kpb.ScaledObjectRef, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kpb.IsActiveResponse:  # noqa: N802
        return kpb.IsActiveResponse(result=self._engine.target > 0)

    async def StreamIsActive(  # noqa: N802
        self, request: kpb.ScaledObjectRef, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[kpb.IsActiveResponse]:
        last: bool | None = None
        while True:
            active = self._engine.target > 0
            if active != last:
                yield kpb.IsActiveResponse(result=active)
                last = active
            await asyncio.sleep(self._interval_s)

    async def GetMetricSpec(  # noqa: N802
        self, request: kpb.ScaledObjectRef, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kpb.GetMetricSpecResponse:
        spec = kpb.MetricSpec(metricName=self._metric_name(request), targetSize=1, targetSizeFloat=1.0)
        return kpb.GetMetricSpecResponse(metricSpecs=[spec])

    async def GetMetrics(  # noqa: N802
        self, request: kpb.GetMetricsRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> kpb.GetMetricsResponse:
        target = self._engine.target
        name = request.metricName or self._metric_name(request.scaledObjectRef)
        value = kpb.MetricValue(metricName=name, metricValue=target, metricValueFloat=float(target))
        return kpb.GetMetricsResponse(metricValues=[value])
