# syntax=docker/dockerfile:1
# The base is a build argument so that a machine without registry access can build the same file
# on an equivalent base of its own (tests/cluster/build-image.sh builds one from Debian's packages).
ARG BASE_IMAGE=python:3.11-slim-bookworm

# Build stage: wheels for the project and its dependencies, with build tools.
FROM ${BASE_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
COPY pyproject.toml README.md ./
COPY sortie_egress ./sortie_egress
COPY webhook ./webhook
RUN python -m venv /opt/sortie \
 && /opt/sortie/bin/pip install --no-compile . \
 && /opt/sortie/bin/python -m compileall -q /opt/sortie/lib

# Final stage: the virtual environment only; no compiler, no pip cache, no source tree.
FROM ${BASE_IMAGE}
COPY --from=build /opt/sortie /opt/sortie
ENV PATH=/opt/sortie/bin:$PATH PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1
# A numeric non-root user, so runAsNonRoot can be verified without a passwd lookup.
USER 65532:65532
WORKDIR /tmp
EXPOSE 8443 8080
ENTRYPOINT ["sortie-egress"]
CMD ["serve", "--tls-cert", "/etc/sortie/tls/tls.crt", "--tls-key", "/etc/sortie/tls/tls.key"]
