"""`rankstream demo`: the sample corpus through the whole pipeline, bi-encoder order beside
the reranked order, so a reader sees what the second stage changes and what it costs."""

from __future__ import annotations

import asyncio

from rich.console import Console
from rich.table import Table

from rankstream.client import RankstreamClient
from rankstream.config import Settings
from rankstream.models.registry import load_embedder
from rankstream.retrieval.corpus import SampleQuery, sample_queries
from rankstream.wire.connection import loggable_url
from rankstream.wire.contract import RankedResult
from rankstream.workers.app import running_workers
from rankstream.workers.stack import index_sample, local_nats

DEMO_TABLE = "rankstream_demo"
SHOWN = 5


async def run_demo(settings: Settings, console: Console, depth: int = 10) -> list[RankedResult]:
    settings = settings.model_copy(update={"table": DEMO_TABLE})
    async with local_nats(settings, port=None) as settings:
        console.print(f"[dim]NATS: {loggable_url(settings.effective_nats_url)}[/dim]")
        with console.status("loading the embedder and indexing the sample corpus"):
            embedder = await asyncio.to_thread(load_embedder, settings)
            indexed = await asyncio.to_thread(index_sample, settings, embedder)
        console.print(f"[dim]indexed {indexed} sample passages into {settings.lancedb_uri}[/dim]")
        with console.status("loading the reranker and starting both workers"):
            workers = running_workers(settings, embedder=embedder)
            await workers.__aenter__()
        try:
            async with RankstreamClient(settings) as client:
                queries = sample_queries()
                results = await asyncio.gather(
                    *(client.query(q.text, top_k=depth, depth=depth) for q in queries)
                )
        finally:
            await workers.__aexit__(None, None, None)
    for query, result in zip(queries, results, strict=True):
        console.print(_comparison(query, result))
        console.print(_timings_line(result))
    console.print(_summary(queries, results))
    return results


def _comparison(query: SampleQuery, result: RankedResult) -> Table:
    table = Table(title=f"[bold]{query.text}[/bold]", title_justify="left", expand=True)
    table.add_column("#", justify="right", width=2)
    table.add_column("bi-encoder order (cosine)")
    table.add_column("reranked order (cross-encoder logit)")
    by_retrieval = sorted(result.results, key=lambda d: d.retrieval_rank)
    for position in range(min(SHOWN, len(result.results))):
        before, after = by_retrieval[position], result.results[position]
        table.add_row(
            str(position + 1),
            _cell(before.doc_id, before.retrieval_score, query, "{:.3f}"),
            _cell(after.doc_id, after.score, query, "{:+.2f}")
            + f" [dim](was #{after.retrieval_rank})[/dim]",
        )
    return table


def _cell(doc_id: str, score: float, query: SampleQuery, number: str) -> str:
    mark = "[green]✓ answers[/green]" if doc_id in query.relevant else ""
    return f"{doc_id} {number.format(score)} {mark}"


def _timings_line(result: RankedResult) -> str:
    stages = " · ".join(f"{k} {v:.0f}" for k, v in result.timings_ms.model_dump().items())
    return (
        f"[dim]ms: {stages}; batch of {result.batch_pairs} pairs from "
        f"{result.batch_requests} requests[/dim]\n"
    )


def _summary(queries: list[SampleQuery], results: list[RankedResult]) -> str:
    def top1(result: RankedResult, reranked: bool) -> str:
        docs = (
            result.results if reranked else sorted(result.results, key=lambda d: d.retrieval_rank)
        )
        return docs[0].doc_id

    before = sum(top1(r, False) in q.relevant for q, r in zip(queries, results, strict=True))
    after = sum(top1(r, True) in q.relevant for q, r in zip(queries, results, strict=True))
    totals = sorted(r.timings_ms.total for r in results)
    inference = sorted(r.timings_ms.inference for r in results)
    return (
        f"[bold]An answering passage ranked first: bi-encoder {before}/{len(queries)}, "
        f"after reranking {after}/{len(queries)}.[/bold]\n"
        f"Median end-to-end latency {totals[len(totals) // 2]:.0f} ms, of which cross-encoder "
        f"inference {inference[len(inference) // 2]:.0f} ms ({len(queries)} queries at once, "
        "pairs batched across them)."
    )
