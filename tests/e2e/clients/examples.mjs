// The OpenAI-compatibility examples of Ollama's docs for the JavaScript `openai` client, as written there
// (only baseURL differs), plus streaming with `for await`. Prints one JSON object with every result;
// tests/e2e/test_clients.py checks it. Usage: node examples.mjs BASE_URL IMAGE_DATA_URL   (e.g. http://127.0.0.1:8000/v1/ data:image/png;base64,...)
import OpenAI from 'openai'

const openai = new OpenAI({
  baseURL: process.argv[2],
  apiKey: 'ollama', // required but unused
})
const results = {}

const chatCompletion = await openai.chat.completions.create({
  messages: [{ role: 'user', content: 'Say this is a test' }],
  model: 'llama3.2',
})
results.chat = chatCompletion

const completion = await openai.completions.create({
  model: 'llama3.2',
  prompt: 'Say this is a test.',
})
results.completion = completion

const listCompletion = await openai.models.list()
results.models = listCompletion.data

const model = await openai.models.retrieve('llama3.2')
results.model = model

const embedding = await openai.embeddings.create({
  model: 'all-minilm',
  input: ['why is the sky blue?', 'why is the grass green?'],
})
results.embedding = embedding

// streaming, greedy so that it can be compared with the same request without streaming
const request = { model: 'llama3.2', messages: [{ role: 'user', content: 'Say this is a test' }], temperature: 0, max_tokens: 12 }
results.chat_greedy = await openai.chat.completions.create(request)
const stream = await openai.chat.completions.create({ ...request, stream: true })
results.chat_stream = []
for await (const chunk of stream) {
  results.chat_stream.push(chunk)
}
const completionStream = await openai.completions.create({ model: 'llama3.2', prompt: 'Say this is a test.', temperature: 0, stream: true })
results.completion_stream = []
for await (const chunk of completionStream) {
  results.completion_stream.push(chunk)
}

// Ollama's image example; the test passes the base64 PNG as a data: URL (argv[3])
const imageUrl = process.argv[3]
const response = await openai.chat.completions.create({
  model: 'llava',
  messages: [
    {
      role: 'user',
      content: [
        { type: 'text', text: "What's in this image?" },
        {
          type: 'image_url',
          image_url: imageUrl,
        },
      ],
    },
  ],
})
results.vision = response
results.vision_greedy = await openai.chat.completions.create({
  model: 'llava',
  messages: [{ role: 'user', content: [{ type: 'text', text: "What's in this image?" }, { type: 'image_url', image_url: imageUrl }] }],
  temperature: 0,
  max_tokens: 8,
})

// the Responses API, greedy so that it can be compared with the Python client's and with chat completions
results.responses = await openai.responses.create({
  model: 'llama3.2',
  instructions: 'You are a terse assistant.',
  input: 'Say this is a test',
  temperature: 0,
  max_output_tokens: 12,
})
results.responses_vision = await openai.responses.create({
  model: 'llava',
  input: [{ role: 'user', content: [{ type: 'input_text', text: "What's in this image?" }, { type: 'input_image', image_url: imageUrl }] }],
  temperature: 0,
  max_output_tokens: 8,
})

console.log(JSON.stringify(results))
