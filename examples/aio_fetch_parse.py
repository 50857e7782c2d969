"""The guide's asyncio example, whole: pages fetched concurrently with aiohttp, each parsed
in paralelo's process pool (a CPU-bound step that would block the event loop), the
results collected.

    python examples/aio_fetch_parse.py                 # pages from a local server it starts
    python examples/aio_fetch_parse.py URL [URL ...]   # the pages at those URLs

Without URLs it serves three pages itself, from 127.0.0.1 only: the example never needs
the network. Needs aiohttp (``pip install aiohttp``).
"""

import asyncio
import collections
import re
import sys

import paralelo

try:
    import aiohttp
    from aiohttp import web
except ImportError:
    sys.exit("this example needs aiohttp: pip install aiohttp")


def parse(html):
    """The CPU-bound step, in a worker process: the page's words and its commonest one."""
    text = re.sub(r"<[^>]+>", " ", html)
    words = re.findall(r"[a-záéíóúñ]+", text.lower())
    common, times = collections.Counter(words).most_common(1)[0] if words else ("", 0)
    return len(words), common, times


async def fetch(session, url):
    # Realiza una solicitud HTTP GET de manera asincrónica
    async with session.get(url) as response:
        response.raise_for_status()
        return await response.text()


async def main(urls):
    async with aiohttp.ClientSession() as session:
        with paralelo.Pool() as pool:
            # Las descargas esperan a la red; el análisis, a un proceso: el bucle sigue.
            pages = await asyncio.gather(*(fetch(session, url) for url in urls))
            results = await asyncio.gather(*(pool.apply_async(parse, (page,)) for page in pages))
    for url, (n, common, times) in zip(urls, results):
        print(f"{url.rsplit('/', 1)[-1]}: {n} palabras, la más común: {common!r} ({times})")


PAGES = {
    "data1": "<html><body><p>paralelo reparte el trabajo entre procesos</p>" * 50 + "</body></html>",
    "data2": "<html><body><h1>asyncio</h1><p>el bucle de eventos sigue vivo</p>" * 80 + "</body></html>",
    "data3": "<html><body><ul><li>datos</li><li>más datos</li></ul>" * 120 + "</body></html>",
}


async def serve_and_run():
    app = web.Application()
    for name, body in PAGES.items():
        app.router.add_get(f"/{name}", lambda request, body=body: web.Response(text=body, content_type="text/html"))
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)  # (a free port, this machine only)
    await site.start()
    port = runner.addresses[0][1]
    try:
        await main([f"http://127.0.0.1:{port}/{name}" for name in PAGES])
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]) if len(sys.argv) > 1 else serve_and_run())
