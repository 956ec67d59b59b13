# One image for every service of the mesh: `docker build -t auditmesh:0.1.0 .`
# Run one with `python -m services.<ingest|processor|query|monitor|scaler>` (the k8s manifests in
# deploy/k8s/ do). Exact versions come from constraints.txt, as for the local mesh.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
WORKDIR /app
COPY pyproject.toml constraints.txt ./
COPY auditmesh ./auditmesh
COPY auditpb ./auditpb
COPY services ./services
RUN pip install --no-cache-dir -c constraints.txt ".[server]" \
    && useradd --system --uid 10001 auditmesh
USER 10001
# Services listen on 0.0.0.0 in a container; each Deployment sets its port.
ENV AUDITMESH_INGEST_HOST=0.0.0.0 AUDITMESH_PROCESSOR_HOST=0.0.0.0 AUDITMESH_QUERY_HOST=0.0.0.0 \
    AUDITMESH_MONITOR_HOST=0.0.0.0 AUDITMESH_SCALER_HOST=0.0.0.0
EXPOSE 50051 50061 50071 50081 50086
CMD ["python", "-m", "services.ingest"]
