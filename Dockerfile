# One image for every service (web, workers, beat, Flower, migrate); docker-compose.yml gives
# each its command. No secret is baked in: all of them come from the environment at run time.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN groupadd --system app && useradd --system --gid app --home-dir /app --no-create-home app

WORKDIR /app

# Dependencies before the code, so a code change does not reinstall them.
COPY requirements.txt .
RUN pip install --no-cache-dir -r requirements.txt

COPY . .

# Static files are part of the image (WhiteNoise serves them). Settings insist on a secret key
# and a payment gateway, so this one command gets throwaway ones (never called; the sandbox is for
# DEBUG only); the image's environment never holds them.
# The code stays root-owned (read-only to the app); only var/ (a SQLite fallback) is writable.
RUN DJANGO_SECRET_KEY=collectstatic-only PAYMENT_GATEWAY_URL=http://gateway.invalid/charges \
    PAYMENT_GATEWAY_API_KEY=collectstatic-only python manage.py collectstatic --noinput \
    && mkdir -p var/media var/flower && chown -R app:app var

USER app

EXPOSE 8000 5555
