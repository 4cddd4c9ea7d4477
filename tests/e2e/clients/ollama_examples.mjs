// The `ollama` JavaScript library against ortserve, as its README writes the calls (only the host differs).
// Prints one JSON object with every result; tests/e2e/test_ollama_clients.py checks it.
// Usage: node ollama_examples.mjs HOST CHAT_MODEL EMBED_MODEL   (e.g. http://127.0.0.1:8000 tiny-llama all-minilm)
import { Ollama } from 'ollama'

const [host, model, embedder] = process.argv.slice(2)
const ollama = new Ollama({ host })
const results = {}
const options = { num_predict: 12, seed: 7 }

results.chat = await ollama.chat({ model, messages: [{ role: 'user', content: 'Why is the sky blue?' }], options })

const stream = await ollama.chat({
  model,
  messages: [{ role: 'user', content: 'Why is the sky blue?' }],
  options,
  stream: true,
})
results.chat_stream = []
for await (const part of stream) results.chat_stream.push(part)

results.generate = await ollama.generate({ model, prompt: 'Why is the sky blue?', options })
results.embed = await ollama.embed({ model: embedder, input: ['The sky is blue.', 'Grass is green.'] })
results.list = await ollama.list()
results.show = await ollama.show({ model })
results.ps = await ollama.ps()
try {
  await ollama.chat({ model: 'no-such-model', messages: [{ role: 'user', content: 'hi' }] })
} catch (error) {
  results.error = { name: error.name, message: error.message, status: error.status_code }
}
process.stdout.write(JSON.stringify(results))
