# A mailstream worker image for docker-compose.yml.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY mailstream ./mailstream
COPY agents ./agents
COPY tables ./tables
RUN pip install --no-cache-dir .
ENV MAILSTREAM_BROKER_EMBEDDED=false \
    MAILSTREAM_DATA_DIR=/var/lib/mailstream \
    MAILSTREAM_WEB_HOST=0.0.0.0
EXPOSE 6066
CMD ["mailstream", "worker"]
