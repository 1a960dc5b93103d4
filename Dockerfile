# tileserver: build with `docker build -t tileserver .`, run with
#   docker run -p 8000:8000 tileserver                       (demo data)
#   docker run -p 8000:8000 -v /data:/data -e TILESERVER_CATALOG_URL=sqlite:////data/catalog.db \
#       tileserver tileserver serve --host 0.0.0.0              (your catalog)
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    TILESERVER_DATA_DIR=/data \
    GDAL_CACHEMAX=512

WORKDIR /app
COPY pyproject.toml README.md ./
COPY tileserver ./tileserver
COPY static ./static
# rasterio wheels bundle GDAL: no system GDAL needed
RUN pip install --no-cache-dir -e . && mkdir -p /data

EXPOSE 8000
HEALTHCHECK CMD python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/healthz')"
CMD ["tileserver", "serve", "--host", "0.0.0.0", "--port", "8000", "--demo"]
