# The gateway image: also runs `tollgate sim` pools in docker-compose.yml.
FROM python:3.11-slim
ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 LITELLM_LOCAL_MODEL_COST_MAP=True
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY gateway ./gateway
COPY migrations ./migrations
COPY policies ./policies
COPY deploy ./deploy
# Editable, so the migrations/ directory next to the package is found at run time.
RUN pip install --no-cache-dir -e .
EXPOSE 8080
ENTRYPOINT ["tollgate"]
CMD ["serve", "--host", "0.0.0.0"]
